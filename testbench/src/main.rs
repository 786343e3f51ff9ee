//! `eddy-testbench`: simulated sensor fleets against a running gateway.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use eddy_firmware_host::replay::Series;
use eddy_firmware_host::{FleetConfig, ReplaySource, run_fleet};
use eddy_gateway::config::BrokerUrl;
use eddy_testbench::{bench, footprint, scenario, serial_fleet};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(
    name = "eddy-testbench",
    version,
    about = "Eddy testbench: simulated sensor fleets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run N simulated devices (the real firmware core) publishing Eddy frames over MQTT.
    Simulate {
        #[arg(long, default_value_t = 10)]
        devices: usize,
        /// Samples per second per device (at most 100).
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
        /// Seconds to run.
        #[arg(long, default_value_t = 60)]
        duration: u64,
        /// Broker the devices publish to.
        #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
        broker: String,
        /// Every Nth device overheats now and then (0: none).
        #[arg(long, default_value_t = 5)]
        hot_every: usize,
        /// Device id prefix (`{prefix}-0000`, ...).
        #[arg(long, default_value = "sim")]
        id_prefix: String,
        /// Play this recorded series (CSV `timestamp,value`, e.g.
        /// testbench/data/*.csv) as every device's temperature.
        #[arg(long)]
        replay: Option<std::path::PathBuf>,
        /// Replay speed: series time per real time (300: 5 min per second).
        #[arg(long, default_value_t = 1.0)]
        speedup: f64,
        /// Devices on serial lines instead of MQTT: one pty per device,
        /// linked as DIR/{device id}, for the gateway's `[[serial]]` ports.
        #[arg(long)]
        serial_dir: Option<std::path::PathBuf>,
    },
    /// Run scenario files (fleet, faults on a timeline, expectations) against
    /// the real `eddy` binary; exits non-zero when an expectation fails.
    Scenario {
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
        /// The gateway binary (default: $EDDY_BIN, or `eddy` next to this one).
        #[arg(long)]
        eddy: Option<std::path::PathBuf>,
    },
    /// End-to-end throughput, alert latency, CPU and memory of the gateway
    /// at several fleet sizes, with the broker pass-through ceiling as
    /// reference; bench.json and SVG plots in --out.
    Bench {
        /// Two small fleets for a few seconds (a smoke run).
        #[arg(long)]
        quick: bool,
        #[arg(long)]
        out: std::path::PathBuf,
        /// Fleet sizes, e.g. 10,100,400 (instead of the preset's).
        #[arg(long, value_delimiter = ',')]
        fleets: Vec<usize>,
        /// Samples per second per device (instead of the preset's).
        #[arg(long)]
        rate: Option<f64>,
        /// Seconds per fleet size (instead of the preset's).
        #[arg(long)]
        duration: Option<u64>,
        #[arg(long)]
        eddy: Option<std::path::PathBuf>,
    },
    /// The daemon's start-up time (spawn to the first CONNACK), idle RSS
    /// and binary size, over several starts on fresh data directories.
    Footprint {
        /// The gateway binary (default: $EDDY_BIN, or `eddy` next to this one).
        #[arg(long)]
        eddy: Option<std::path::PathBuf>,
        /// Run it through this program, e.g. "qemu-aarch64 -L /usr/aarch64-linux-gnu".
        #[arg(long)]
        runner: Option<String>,
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Seconds idle before RSS is read.
        #[arg(long, default_value_t = 5)]
        idle: u64,
        /// Also write the figures here as JSON.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Footprint {
            eddy,
            runner,
            runs,
            idle,
            out,
        } => {
            let options = footprint::FootprintOptions {
                eddy: match eddy {
                    Some(p) => p,
                    None => scenario::find_eddy()?,
                },
                runner,
                runs,
                idle: Duration::from_secs(idle),
            };
            let figures =
                tokio::task::spawn_blocking(move || footprint::measure(&options)).await??;
            print!("{}", figures.summary());
            if let Some(path) = out {
                std::fs::write(&path, serde_json::to_vec_pretty(&figures)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
        Command::Bench {
            quick,
            out,
            fleets,
            rate,
            duration,
            eddy,
        } => {
            let eddy = match eddy {
                Some(p) => p,
                None => scenario::find_eddy()?,
            };
            let mut options = if quick {
                bench::BenchOptions::quick()
            } else {
                bench::BenchOptions::full()
            };
            if !fleets.is_empty() {
                anyhow::ensure!(fleets.iter().all(|&n| n > 0), "--fleets: sizes >= 1");
                options.fleets = fleets;
            }
            if let Some(r) = rate {
                anyhow::ensure!(r > 0.0 && r <= 100.0, "--rate must be in (0, 100]");
                options.rate = r;
            }
            if let Some(d) = duration {
                options.duration = Duration::from_secs(d.max(1));
            }
            let report = bench::run(&options, &eddy, &out).await?;
            print!("{}", bench::summary(&report));
            println!(
                "\nwritten: {0}/bench.json, {0}/throughput.svg, {0}/latency_cdf.svg, {0}/rss.svg",
                out.display()
            );
            Ok(())
        }
        Command::Scenario { files, eddy } => {
            let eddy = match eddy {
                Some(p) => p,
                None => scenario::find_eddy()?,
            };
            let mut failed = 0;
            for file in &files {
                let s = scenario::Scenario::load(file)?;
                println!("== {} ({})", s.name, file.display());
                let outcome = scenario::run(&s, &eddy).await?;
                for c in &outcome.checks {
                    println!(
                        "  {}  {:<48} {}",
                        if c.passed { "ok  " } else { "FAIL" },
                        c.name,
                        c.detail
                    );
                }
                println!(
                    "  {} frames, {} readings, {} JSON publishes acknowledged, \
                     {} alert notifications, {} device reboots, {} gateway restarts, \
                     gateway max RSS {:.1} MB, {:.1?}",
                    outcome.frames_sent,
                    outcome.readings_sent,
                    outcome.json_acked,
                    outcome.alerts_seen,
                    outcome.reboots,
                    outcome.gateway_restarts,
                    outcome.max_rss_kb as f64 / 1024.0,
                    outcome.elapsed
                );
                if !outcome.passed() {
                    failed += 1;
                }
            }
            anyhow::ensure!(failed == 0, "{failed} of {} scenarios failed", files.len());
            Ok(())
        }
        Command::Simulate {
            devices,
            rate,
            duration,
            broker,
            hot_every,
            id_prefix,
            replay,
            speedup,
            serial_dir,
        } => {
            anyhow::ensure!(speedup > 0.0, "--speedup must be positive");
            let replay = match replay {
                Some(path) => {
                    let series = Series::load(&path)?;
                    if series.skipped > 0 {
                        eprintln!(
                            "{}: {} rows out of time order skipped",
                            path.display(),
                            series.skipped
                        );
                    }
                    Some(ReplaySource {
                        series: Arc::new(series),
                        speedup,
                    })
                }
                None => None,
            };
            anyhow::ensure!(rate > 0.0 && rate <= 100.0, "--rate must be in (0, 100]");
            let url = BrokerUrl::parse(&broker).map_err(anyhow::Error::msg)?;
            let stop = CancellationToken::new();
            let ctrl_c = stop.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                ctrl_c.cancel();
            });
            let fleet = FleetConfig {
                devices,
                rate_hz: rate,
                duration: Duration::from_secs(duration),
                host: url.host,
                port: url.port,
                hot_every: (hot_every > 0).then_some(hot_every),
                id_prefix,
                replay,
                ..FleetConfig::default()
            };
            let report = match serial_dir {
                Some(dir) => {
                    println!(
                        "simulating {devices} devices at {rate} Hz for {duration} s on ptys in {}",
                        dir.display()
                    );
                    serial_fleet::run(&fleet, &dir, stop).await?
                }
                None => {
                    println!(
                        "simulating {devices} devices at {rate} Hz for {duration} s against {broker}"
                    );
                    run_fleet(fleet, stop).await.context("fleet failed")?
                }
            };
            println!(
                "frames sent {}, stored (acknowledged by the gateway) {}, retransmitted {}, \
                 evicted from full backlogs {}, readings {}",
                report.frames_sent(),
                report.frames_acked(),
                report.frames_retransmitted(),
                report.frames_dropped(),
                report.readings_sent()
            );
            anyhow::ensure!(
                report.frames_acked() == report.frames_sent(),
                "{} frames were not acknowledged as stored by an Eddy gateway",
                report.frames_sent() - report.frames_acked()
            );
            Ok(())
        }
    }
}
