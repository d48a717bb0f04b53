//! `cargo xtask bench`'s program: measures the control plane and the data plane and writes
//! the report (see `hybrid_proxy_tests::bench`).
//!
//! ```text
//! bench [--quick] [--out DIR] [--agent PATH] [--only control|data]
//! ```

use std::{path::PathBuf, process::ExitCode};

use hybrid_proxy_tests::bench::{self, Options};

fn usage() -> ExitCode {
    eprintln!("usage: bench [--quick] [--out DIR] [--agent PATH] [--only control|data]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "the benchmark builds network namespaces, programs nftables and loads eBPF programs: run it as root"
        );
        return ExitCode::FAILURE;
    }
    let exe = std::env::current_exe().expect("our own path");
    let mut agent = exe.with_file_name("proxy-agent");
    let mut out = PathBuf::from("target/bench");
    let mut quick = false;
    let mut only: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--out" => match args.next() {
                Some(v) => out = v.into(),
                None => return usage(),
            },
            "--agent" => match args.next() {
                Some(v) => agent = v.into(),
                None => return usage(),
            },
            "--only" => match args.next() {
                Some(v) if v == "control" || v == "data" => only = Some(v),
                _ => return usage(),
            },
            _ => return usage(),
        }
    }
    if !agent.is_file() {
        eprintln!(
            "{} is missing: build it (cargo xtask bench does)",
            agent.display()
        );
        return ExitCode::FAILURE;
    }
    let mut opts = if quick {
        Options::quick(agent, out.clone())
    } else {
        Options::full(agent, out.clone())
    };
    if let Some(only) = &only {
        opts.control = only == "control";
        opts.data = only == "data";
    }
    let command = if quick {
        "cargo xtask bench --quick"
    } else {
        "cargo xtask bench"
    };
    match bench::run(&opts, command) {
        Ok(report) => {
            println!("{}", report.main_tables());
            println!("report: {}", out.join("report.md").display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
