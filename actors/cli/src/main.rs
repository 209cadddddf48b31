//! The `actormesh` command: reads the command line and hands each command to the module of
//! its group. Flags live in `args`; what `-o` prints, in `output` and `tables`.

use std::process::ExitCode;

use clap::Parser;

mod analyze;
mod apply;
mod args;
mod authz;
mod backup;
mod ca;
mod call;
mod cert;
mod describe;
mod drain;
mod get;
mod logs;
mod output;
mod serve;
mod tables;
mod token;
mod top;

use args::{Cli, Command};

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let done = match cli.command {
        Command::Call(args) => return call::run(args),
        Command::Top(args) => return top::run(args),
        Command::Authz(args::AuthzCommand::Check(args)) => return authz::check(args),
        Command::Ca(command) => ca::run(command),
        Command::Master(args) => serve::master(*args),
        Command::Agent(args) => serve::agent(args),
        Command::Gateway(args) => serve::gateway(args),
        Command::Dev(args) => serve::dev(args),
        Command::Token(command) => token::run(command),
        Command::Cert(command) => cert::run(command),
        Command::Apply(args) => apply::apply(args),
        Command::Analyze(args) => analyze::run(args),
        Command::Delete { what } => apply::delete(what),
        Command::Get { what } => get::run(what),
        Command::Describe { what } => describe::run(what),
        Command::Drain { what } => drain::run(what),
        Command::Logs(args) => logs::run(args),
        Command::Backup(args) => backup::backup(args),
        Command::Restore(args) => backup::restore(args),
    };
    done.map(|()| ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A call prints its reply on stdout and only what went wrong on stderr.
    let default = match cli.command {
        Command::Call(_) | Command::Top(_) => "warn",
        _ => "info",
    };
    actormesh_cli::init_logging_with_default(default, cli.log_format);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
