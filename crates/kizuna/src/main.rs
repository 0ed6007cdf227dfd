//! The `kizuna` command: the server and the operator's tools, in one binary.

mod apply_templates;
mod bench;
mod bench_engine;
mod bench_ingest;
mod bench_program;
mod bench_send;
mod cli;
mod config;
mod demo;
mod mail;
mod serve;
mod transfer;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
