//! Watch responses: a chunked body of newline-separated watch events, as the API server sends.
//!
//! A watch replays the history after its resourceVersion, then follows new writes, sends a
//! `BOOKMARK` on every tick when asked to, and ends after `timeoutSeconds`. A starting point
//! older than the history is answered the way the API server answers it: status 200 with one
//! `ERROR` event carrying a `410 Expired` `Status`.

use std::{
    collections::{HashMap, VecDeque},
    io,
    sync::Arc,
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    http::StatusCode,
    response::Response,
};
use serde_json::{Value, json};
use tokio::{
    sync::watch,
    time::{Instant, Interval, MissedTickBehavior},
};
use tracing::debug;

use super::{
    Shared,
    http::{RequestError, flag, response_body, status_object},
    store::{ResourceType, Selection},
};

/// How long a watch lasts when the client gives no `timeoutSeconds`; the API server's
/// `--min-request-timeout` default.
const DEFAULT_TIMEOUT: Duration = Duration::from_mins(30);

pub(crate) fn start(
    shared: &Arc<Shared>,
    resource: &ResourceType,
    selection: Selection,
    query: &HashMap<String, String>,
) -> Result<Response, RequestError> {
    // Streaming lists are opt-in in kube-rs (`InitialListStrategy::StreamingList`); a test
    // that turns them on should fail loudly rather than hang on a missing final bookmark.
    if flag(query, "sendInitialEvents") {
        return Err(RequestError::Unimplemented {
            feature: "sendInitialEvents (streaming lists)",
        });
    }
    let requested = query.get("resourceVersion").map_or("", String::as_str);
    let from = match requested {
        // "0" or no version: start from the current state, sent as ADDED events.
        "" | "0" => None,
        rv => Some(
            rv.parse::<u64>()
                .map_err(|_| RequestError::ResourceVersion {
                    given: rv.to_owned(),
                })?,
        ),
    };
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|s| s.parse().ok())
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs);
    let period = shared.bookmark_interval();
    let bookmarks = (flag(query, "allowWatchBookmarks") && !period.is_zero()).then_some(period);

    // Subscribe before reading the store, so that no write falls between the two.
    let mut stream = WatchStream {
        shared: Arc::clone(shared),
        resource: resource.clone(),
        selection,
        cursor: 0,
        pending: VecDeque::new(),
        writes: shared.writes.subscribe(),
        drops: shared.drops.subscribe(),
        deadline: Instant::now() + timeout,
        bookmarks: bookmarks.map(|period| {
            let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            ticks
        }),
        done: false,
    };
    let key = &resource.key;
    let start = shared.with_store(|store| {
        let start = match from {
            None => {
                let (rv, items) = store.list(key, &stream.selection);
                Ok((rv, items.into_iter().map(|o| ("ADDED", o)).collect()))
            }
            Some(from) => store.changes_since(key, from).map(|changes| {
                let events = changes
                    .iter()
                    .filter_map(|c| Some((stream.selection.event_type(c)?, c.object.clone())))
                    .collect::<Vec<_>>();
                // A version the store has not reached yet: only what comes after it is sent.
                (store.rv().max(from), events)
            }),
        };
        if start.is_err() {
            store.counts_mut(key).expired_watches += 1;
        }
        start
    });
    match start {
        Ok((rv, events)) => {
            debug!(resource = %key.plural, from = requested, events = events.len(), "watch started");
            stream.cursor = rv;
            stream
                .pending
                .extend(events.iter().map(|(kind, object)| event_line(kind, object)));
        }
        Err(expired) => {
            debug!(resource = %key.plural, %expired, "watch expired");
            stream.pending.push_back(expired_line(&expired.to_string()));
            stream.done = true;
        }
    }
    let body = futures::stream::unfold(stream, |mut stream| async move {
        let line = stream.next_line().await?;
        Some((line, stream))
    });
    Ok(response_body(Body::from_stream(body)))
}

struct WatchStream {
    shared: Arc<Shared>,
    resource: ResourceType,
    selection: Selection,
    /// Every change up to this RV has been sent or filtered out; bookmarks carry it.
    cursor: u64,
    pending: VecDeque<Bytes>,
    writes: watch::Receiver<u64>,
    drops: watch::Receiver<u64>,
    deadline: Instant,
    bookmarks: Option<Interval>,
    done: bool,
}

impl WatchStream {
    async fn next_line(&mut self) -> Option<Result<Bytes, io::Error>> {
        loop {
            if let Some(line) = self.pending.pop_front() {
                return Some(Ok(line));
            }
            if self.done {
                return None;
            }
            tokio::select! {
                biased;
                _ = self.drops.changed() => return Some(self.abort()),
                () = tokio::time::sleep_until(self.deadline) => {
                    debug!(resource = %self.resource.key.plural, "watch timed out");
                    return None;
                }
                changed = self.writes.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    if !self.catch_up() {
                        return Some(self.abort());
                    }
                }
                () = tick(self.bookmarks.as_mut()) => {
                    self.pending.push_back(self.bookmark_line());
                }
            }
        }
    }

    /// Queues the writes after the cursor; false when the watch has been dropped instead.
    fn catch_up(&mut self) -> bool {
        let key = &self.resource.key;
        let (changes, rv) = self
            .shared
            .with_store(|store| (store.changes_since(key, self.cursor), store.rv()));
        // A `drop_watches()` that returned before a write must keep that write off this watch:
        // the test relies on the client missing it. The store lock orders the two.
        if self.drops.has_changed().unwrap_or(true) {
            return false;
        }
        match changes {
            Ok(changes) => {
                let selection = &self.selection;
                self.pending.extend(changes.iter().filter_map(|change| {
                    Some(event_line(selection.event_type(change)?, &change.object))
                }));
                self.cursor = rv;
            }
            Err(expired) => {
                // Compacted past this watcher while it was between reads.
                debug!(resource = %key.plural, %expired, "live watch expired");
                self.pending.push_back(expired_line(&expired.to_string()));
                self.done = true;
            }
        }
        true
    }

    fn abort(&mut self) -> Result<Bytes, io::Error> {
        debug!(resource = %self.resource.key.plural, "watch dropped");
        self.done = true;
        self.pending.clear();
        // An error from the body makes hyper cut the connection without the final chunk, so the
        // client sees the stream break, not end.
        Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "watch dropped by the test",
        ))
    }

    fn bookmark_line(&self) -> Bytes {
        line(&json!({
            "type": "BOOKMARK",
            "object": {
                "kind": self.resource.kind,
                "apiVersion": self.resource.api_version(),
                "metadata": {"resourceVersion": self.cursor.to_string()},
            },
        }))
    }
}

async fn tick(ticks: Option<&mut Interval>) {
    match ticks {
        Some(ticks) => {
            ticks.tick().await;
        }
        None => std::future::pending().await,
    }
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    line(&json!({"type": kind, "object": object}))
}

fn expired_line(message: &str) -> Bytes {
    line(&json!({
        "type": "ERROR",
        "object": status_object(StatusCode::GONE, "Expired", message),
    }))
}

fn line(value: &Value) -> Bytes {
    let mut line = value.to_string().into_bytes();
    line.push(b'\n');
    line.into()
}
