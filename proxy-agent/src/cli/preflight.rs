//! `proxy-agent preflight`: checks this node before the agent runs (the DaemonSet's init
//! container).

use std::process::ExitCode;

use clap::Args;

use super::CommonOptions;
use crate::preflight::{self, Status};

/// Options of `preflight`.
#[derive(Debug, Args)]
pub struct PreflightOptions {
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub common: CommonOptions,
}

/// Prints the report; fails when any check failed.
pub fn preflight(opts: &PreflightOptions) -> anyhow::Result<ExitCode> {
    let config = opts.common.config()?;
    let report = preflight::run(&config);
    if opts.json {
        println!("{}", report.to_json());
    } else {
        println!("{report}");
    }
    Ok(if report.status() == Status::Fail {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
