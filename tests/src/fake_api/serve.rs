//! The server thread: its own single-threaded tokio runtime, an accept loop, and the commands
//! that take the server down and bring it back.
//!
//! Everything, rebinding included, runs on this one thread. A thread inherits its creator's
//! network namespace, so a server started from a thread that entered a namespace keeps
//! serving (and rebinding) inside it.

use std::{io, net::SocketAddr, sync::Arc};

use hyper_util::{rt::TokioIo, service::TowerToHyperService};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
    task::JoinSet,
};
use tracing::{debug, info, warn};

use super::{Shared, http};

pub(crate) enum Command {
    /// Close the listener and every connection, then acknowledge.
    Stop(std::sync::mpsc::Sender<()>),
    /// Listen again on the same address, then acknowledge with the outcome.
    Restart(std::sync::mpsc::Sender<io::Result<()>>),
    Shutdown,
}

pub(crate) fn run(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building the fake API server's runtime");
    runtime.block_on(async move {
        let addr = listener.local_addr().expect("listener has an address");
        let mut listener =
            Some(TcpListener::from_std(listener).expect("registering the listener with tokio"));
        let router = http::router(shared);
        let mut connections = JoinSet::new();
        info!(%addr, "fake API server serving");
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    None | Some(Command::Shutdown) => break,
                    Some(Command::Stop(ack)) => {
                        listener = None;
                        close_all(&mut connections).await;
                        info!(%addr, "fake API server stopped");
                        let _ = ack.send(());
                    }
                    Some(Command::Restart(ack)) => {
                        let outcome = match listener {
                            Some(_) => Ok(()),
                            None => rebind(addr).await.map(|l| listener = Some(l)),
                        };
                        let _ = ack.send(outcome);
                    }
                },
                accepted = accept(listener.as_ref()) => match accepted {
                    Ok((stream, peer)) => {
                        debug!(%peer, "connection accepted");
                        let service = TowerToHyperService::new(router.clone());
                        connections.spawn(async move {
                            let connection = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service);
                            if let Err(error) = connection.await {
                                debug!(%peer, %error, "connection ended with an error");
                            }
                        });
                    }
                    Err(error) => warn!(%error, "accept failed"),
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        close_all(&mut connections).await;
    });
}

async fn accept(listener: Option<&TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Dropping a connection's task closes its socket: clients see open watches break and pooled
/// connections die, as when an API server goes away.
async fn close_all(connections: &mut JoinSet<()>) {
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

async fn rebind(addr: SocketAddr) -> io::Result<TcpListener> {
    let listener = TcpListener::bind(addr).await?;
    info!(%addr, "fake API server serving again");
    Ok(listener)
}
