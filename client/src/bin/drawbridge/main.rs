//! `drawbridge`: the command-line tool for Drawbridge (and Liftbridge) clusters.
//!
//! Modules:
//! - `args`: the clap definitions and the value parsers (`--from offset:5`, `k=v` headers...);
//! - `cmd_stream`, `cmd_publish`, `cmd_subscribe`, `cmd_cursor`, `cmd_cluster` (`metadata`, `cluster
//!   status`), `cmd_bench`: one per command;
//! - `output`: JSON lines and tables; `bench_report`: the bench summary.
//!
//! Errors print as one line, `error: ...` with the causes joined by `: `, and exit with
//! status 1 (clap's own usage errors exit with 2). Nothing panics on user or server input.

mod args;
mod bench_report;
mod cmd_bench;
mod cmd_cluster;
mod cmd_cursor;
mod cmd_publish;
mod cmd_stream;
mod cmd_subscribe;
mod output;

use std::process::ExitCode;

use clap::Parser;
use drawbridge_client::{Client, TlsOptions};

use crate::args::{Cli, ClusterCommand, Command, TlsArgs};

/// What can make a command fail.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The client (or the cluster) said no.
    #[error(transparent)]
    Client(#[from] drawbridge_client::Error),
    /// Reading input or writing output failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The arguments do not make sense together.
    #[error("{0}")]
    Usage(String),
    /// A check found a problem (`cluster verify`).
    #[error("{0}")]
    Check(String),
}

impl CliError {
    pub fn io(context: &str, source: std::io::Error) -> CliError {
        CliError::Io {
            context: context.to_string(),
            source,
        }
    }
}

pub type CliResult<T = ()> = Result<T, CliError>;

/// The error and its causes on one line.
fn one_line(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = s.source();
    }
    line.replace('\n', " ")
}

fn read_file(path: &std::path::Path) -> CliResult<Vec<u8>> {
    std::fs::read(path).map_err(|e| CliError::io(&format!("reading {}", path.display()), e))
}

fn tls_options(args: &TlsArgs) -> CliResult<Option<TlsOptions>> {
    let wanted = args.tls || args.tls_ca.is_some() || args.tls_cert.is_some();
    if !wanted {
        return Ok(None);
    }
    let ca_pem = args.tls_ca.as_deref().map(read_file).transpose()?;
    let client_identity_pem = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some((read_file(cert)?, read_file(key)?)),
        _ => None,
    };
    Ok(Some(TlsOptions {
        ca_pem,
        client_identity_pem,
        domain: args.tls_domain.clone(),
    }))
}

async fn run(cli: Cli) -> CliResult {
    let mut builder = Client::builder(&cli.addrs)
        .connect_timeout(cli.timeout)
        .request_timeout(cli.timeout)
        .ack_timeout(cli.timeout);
    if let Some(tls) = tls_options(&cli.tls)? {
        builder = builder.tls(tls);
    }
    let client = builder.connect().await?;
    match cli.command {
        Command::Stream(cmd) => cmd_stream::run(&client, cmd).await,
        Command::Publish(args) => cmd_publish::run(&client, args).await,
        Command::Subscribe(args) => cmd_subscribe::run(&client, args).await,
        Command::Cursor(cmd) => cmd_cursor::run(&client, cmd).await,
        Command::Metadata(args) => cmd_cluster::metadata(&client, args).await,
        Command::Cluster(ClusterCommand::Status) => cmd_cluster::status(&client).await,
        Command::Cluster(ClusterCommand::Verify { json }) => {
            cmd_cluster::verify(&client, json).await
        }
        Command::Bench(args) => cmd_bench::run(&client, args).await,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_fit_on_one_line() {
        let e = CliError::io("reading stdin", std::io::Error::other("broken\npipe"));
        assert_eq!(one_line(&e), "reading stdin: broken pipe");
        let e = CliError::from(drawbridge_client::Error::StreamExists);
        assert_eq!(one_line(&e), "stream already exists");
    }
}
