//! `mose-uav`: a UAV-autopilot-like control loop over UDP (see
//! `mose_workloads::uav`) and its ground-station client.

use std::net::{ToSocketAddrs, UdpSocket};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use mose_workloads::uav::{UavConfig, UavService, COMMAND_HZ};
use mose_workloads::uav_client;

#[derive(Debug, Parser)]
#[command(
    name = "mose-uav",
    args_override_self = true,
    arg_required_else_help = true,
    about = "A UAV-autopilot-like control loop: UDP setpoints at 50 Hz answered with telemetry, a \
             state estimate and a command history kept between them"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve the control loop.
    Serve(UavConfig),
    /// Stream commands to a service and report the loop's KPIs as JSON.
    Client {
        /// The service, HOST:PORT.
        #[arg(long, value_name = "HOST:PORT")]
        addr: String,
        /// Command rate, Hz.
        #[arg(long, value_name = "HZ", default_value_t = COMMAND_HZ)]
        rate: f64,
        /// How long to stream, s.
        #[arg(long, value_name = "S", default_value_t = 10.0)]
        seconds: f64,
    },
}

fn serve(config: &UavConfig) -> Result<()> {
    mose_workloads::exit_on_sigterm();
    let svc = UavService::start(config)?;
    eprintln!(
        "mose-uav: control loop on udp {} history_mib={}",
        svc.local_addr(),
        config.history_mib
    );
    svc.wait();
    Ok(())
}

fn client(addr: &str, rate: f64, seconds: f64) -> Result<()> {
    let server = addr
        .to_socket_addrs()
        .with_context(|| format!("resolving {addr}"))?
        .next()
        .with_context(|| format!("{addr} resolves to nothing"))?;
    let run_for = Duration::try_from_secs_f64(seconds).context("--seconds")?;
    let socket = UdpSocket::bind("0.0.0.0:0").context("binding the client socket")?;
    let h = uav_client::start(socket, server, rate)?;
    std::thread::sleep(run_for);
    let r = h.stop()?;
    eprintln!("mose-uav: {}", r.summary());
    println!("{}", serde_json::to_string(&r).context("report json")?);
    Ok(())
}

fn main() -> ExitCode {
    let r = match Cli::parse().cmd {
        Cmd::Serve(c) => serve(&c),
        Cmd::Client {
            addr,
            rate,
            seconds,
        } => client(&addr, rate, seconds),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mose-uav: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(s: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("mose-uav").chain(s.split_whitespace()))
    }

    #[test]
    fn commands_parse_and_unknown_options_are_refused() {
        Cli::command().debug_assert();
        let Cmd::Serve(c) = parse("serve").expect("serve").cmd else {
            panic!("not serve");
        };
        assert_eq!(c, UavConfig::default());
        let Cmd::Serve(c) = parse("serve --port 9 --history-mib 8 --bind 127.0.0.1")
            .expect("serve flags")
            .cmd
        else {
            panic!("not serve");
        };
        assert_eq!(
            (c.port, c.history_mib, c.bind.as_str()),
            (9, 8, "127.0.0.1")
        );
        assert!(matches!(
            parse("client --addr 10.0.0.1:14550").expect("client").cmd,
            Cmd::Client { rate, seconds, .. } if rate == 50.0 && seconds == 10.0
        ));
        for bad in ["", "serve --bogus", "serve --port x", "client", "fly"] {
            let e = parse(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        }
    }
}
