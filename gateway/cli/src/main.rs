//! `eddy`: the gateway daemon and CLI.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use eddy_cli::client::{Campaigns, Client, TokenArgs};
use eddy_cli::demo::{self, DemoOptions};
use eddy_cli::display;
use eddy_gateway::Gateway;
use eddy_gateway::campaign::Status;
use eddy_gateway::config::Config;
use hyper::Method;
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(name = "eddy", version, about = "Eddy edge telemetry gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway (embedded broker unless one is configured).
    Run {
        /// Config file; every field has a default, so none is needed.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Use this external broker (mqtt://host:port) instead of the embedded one.
        #[arg(long)]
        broker: Option<String>,
        /// Override `data_dir`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Gateway, embedded broker and a simulated fleet in one process.
    Demo {
        #[arg(long, default_value_t = 20)]
        devices: usize,
        /// Seconds the fleet runs.
        #[arg(long, default_value_t = 15)]
        duration: u64,
        /// Samples per second per device.
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        /// Keep the store in this directory instead of a temporary one.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Validate a config file and exit (non-zero on error).
    Check { config: PathBuf },
    /// Copy what still reads from a damaged store file (one the gateway
    /// refused at start) into a new store, and say per table what was
    /// copied and what was unreadable. The damaged file is not changed.
    /// Exits non-zero if anything was unreadable.
    Salvage {
        /// The damaged file, moved aside (e.g. eddy-data/eddy.redb.damaged).
        damaged: PathBuf,
        /// The new store to write (must not exist), e.g. eddy-data/eddy.redb.
        into: PathBuf,
    },
    /// SQL over the stored samples (table `samples`), with polars: runs
    /// the `eddy-query` binary with these arguments (`eddy query --help`).
    /// Reads the store file, or a running gateway's HTTP API.
    #[command(disable_help_flag = true)]
    Query {
        #[arg(num_args = 0.., trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Alert rules: check files, list and change a running gateway's.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// The alerts a running gateway has: pending and firing, or history.
    Alerts {
        /// The newest notifications instead of the active alerts.
        #[arg(long)]
        history: bool,
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        #[command(flatten)]
        token: TokenArgs,
    },
    /// API tokens of a running gateway (needs an admin token): create one
    /// with a scope (`read`: GETs and /metrics; `admin`: everything),
    /// list them, revoke one.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Device credentials on a running gateway's embedded broker (needs
    /// an admin token): add one (its secret is printed once; the device
    /// connects with its id as user name and the secret as password),
    /// list them, revoke one.
    Device {
        #[command(subcommand)]
        command: DeviceCommand,
    },
    /// Signed firmware images: keys, signing, inspection.
    Ota {
        #[command(subcommand)]
        command: OtaCommand,
    },
    /// Put firmware on a device. `--qemu`: boot it in QEMU (lm3s6965evb)
    /// with its UART on a pty and run the gateway attached to that port.
    /// Otherwise: write `--elf` to a board through probe-rs.
    Flash {
        /// Emulate instead of flashing hardware.
        #[arg(long)]
        qemu: bool,
        /// Firmware ELF; with --qemu, built from firmware/qemu when absent.
        #[arg(long)]
        elf: Option<PathBuf>,
        /// probe-rs chip name for hardware (e.g. STM32F411CEUx, nRF52840_xxAA).
        #[arg(long)]
        chip: Option<String>,
        /// Gateway config for --qemu (its [[serial]] ports are replaced).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum RulesCommand {
    /// Validate rule files (rules-directory files or eddy.toml) without
    /// running them; every error with file, line and column; non-zero
    /// exit on any.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// The rules a running gateway runs, with where each is defined.
    List {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        #[command(flatten)]
        token: TokenArgs,
    },
    /// Create or replace a rule through the API (kept across restarts).
    Put {
        name: String,
        /// The rule as JSON (the fields of a [[rules]] table).
        json: String,
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        #[command(flatten)]
        token: TokenArgs,
    },
    /// Delete a rule created through the API.
    Delete {
        name: String,
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        #[command(flatten)]
        token: TokenArgs,
    },
}

/// Which gateway's API, with which token.
#[derive(clap::Args, Debug)]
struct Api {
    #[arg(long, default_value = DEFAULT_GATEWAY)]
    url: String,
    #[command(flatten)]
    token: TokenArgs,
}

impl Api {
    fn client(&self) -> anyhow::Result<Client> {
        api(&self.url, &self.token)
    }
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Create a token; it is printed once and kept only as a hash.
    Create {
        name: String,
        #[arg(long, value_parser = ["read", "admin"])]
        scope: String,
        #[command(flatten)]
        gateway: Api,
    },
    /// Every token's name, scope and creation time.
    List {
        #[command(flatten)]
        gateway: Api,
    },
    /// Revoke a token: requests with it are refused from now on.
    Revoke {
        name: String,
        #[command(flatten)]
        gateway: Api,
    },
}

#[derive(Subcommand, Debug)]
enum DeviceCommand {
    /// Credentials for device ID; the secret is printed once and kept
    /// only as an argon2 hash.
    Add {
        id: String,
        /// `device`: its own topics only; `observer`: subscribes to
        /// anything, publishes nothing; `publisher`: publishes on any
        /// ingest topic (a Telegraf agent, a bridge), subscribes to nothing.
        #[arg(long, value_parser = ["device", "observer", "publisher"], default_value = "device")]
        role: String,
        #[command(flatten)]
        gateway: Api,
    },
    /// Every device with credentials: id, role, creation time.
    List {
        #[command(flatten)]
        gateway: Api,
    },
    /// Revoke a device's credentials: its next CONNECT is refused.
    Revoke {
        id: String,
        #[command(flatten)]
        gateway: Api,
    },
}

#[derive(Subcommand, Debug)]
enum OtaCommand {
    /// Create an ed25519 key pair (eddy-ota.key, eddy-ota.pub) in DIR.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a firmware binary into an Eddy image.
    Sign {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        board: String,
        /// Semantic version X.Y.Z; devices refuse anything not newer.
        #[arg(long)]
        version: String,
        input: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Print an image's header; verify it completely with --pubkey.
    Inspect {
        file: PathBuf,
        #[arg(long)]
        pubkey: Option<PathBuf>,
    },
    /// Update devices through a running gateway: canary group first, then
    /// stage by stage, halting when too many fail. Follows the campaign
    /// until it ends (exit 1 when it halts) unless --detach.
    Deploy {
        /// A signed image (`eddy ota sign`).
        #[arg(long)]
        image: PathBuf,
        /// Device ids and patterns, comma separated: `dev-1,line-3-*`, `all`.
        #[arg(long)]
        devices: String,
        /// Share of the devices updated first.
        #[arg(long, default_value = "5%")]
        canary: String,
        /// Cumulative shares after the canary group; the last is 100%.
        #[arg(long, default_value = "100%")]
        stages: String,
        /// Halt when more than this share of the devices started failed.
        #[arg(long, default_value = "10%")]
        max_failures: String,
        /// Return once the campaign is created.
        #[arg(long)]
        detach: bool,
        #[arg(long, default_value = DEFAULT_GATEWAY)]
        gateway: String,
        #[command(flatten)]
        token: TokenArgs,
    },
    /// Campaigns of a running gateway; with an id, every device's state.
    Status {
        campaign: Option<u32>,
        #[arg(long, default_value = DEFAULT_GATEWAY)]
        gateway: String,
        #[command(flatten)]
        token: TokenArgs,
    },
    /// Stop a campaign from starting further devices.
    Halt {
        campaign: u32,
        #[arg(long, default_value = DEFAULT_GATEWAY)]
        gateway: String,
        #[command(flatten)]
        token: TokenArgs,
    },
}

/// The gateway's HTTP API, as `[http] listen` has it by default.
const DEFAULT_GATEWAY: &str = "http://127.0.0.1:8080";

/// A client of the API at `url` with the token `token` finds.
fn api(url: &str, token: &TokenArgs) -> anyhow::Result<Client> {
    Ok(Client::new(url)?.with_token(token.token()?))
}

fn init_logging(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // Under systemd, stderr is the journal, which stamps each line itself.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        logs.without_time().init();
    } else {
        logs.init();
    }
}

/// Ctrl-C, or SIGTERM (what service managers send to stop a daemon).
async fn stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            config,
            broker,
            data_dir,
        } => {
            init_logging("info,rmqtt=error,rmqtt_net=warn,rmqtt_acl=warn,rmqtt_retainer=warn");
            let mut config = match config {
                Some(path) => Config::load(&path)?,
                None => Config::default(),
            };
            if broker.is_some() {
                config.broker.url = broker;
            }
            if let Some(d) = data_dir {
                config.data_dir = d;
            }
            config.validate()?;
            let gateway = Gateway::start(config).await?;
            let token = gateway.shutdown_token();
            tokio::spawn(async move {
                stop_signal().await;
                tracing::info!("shutting down");
                token.cancel();
            });
            gateway.wait().await?;
            Ok(())
        }
        Command::Demo {
            devices,
            duration,
            rate,
            data_dir,
        } => {
            init_logging("warn,rmqtt=error,rmqtt_net=error");
            anyhow::ensure!(devices > 0, "--devices must be at least 1");
            anyhow::ensure!(
                rate > 0.0 && rate <= 100.0,
                "--rate must be in (0, 100] samples/s"
            );
            println!(
                "eddy demo: {devices} simulated devices at {rate} Hz for {duration} s; \
                 every 5th device overheats now and then (rule: mean temperature over 2 s > 50)\n"
            );
            let report = demo::run(
                DemoOptions {
                    devices,
                    duration: Duration::from_secs(duration),
                    rate_hz: rate,
                    data_dir,
                },
                |line| println!("{line}"),
            )
            .await
            .context("demo failed")?;
            print!("{}", report.summary());
            let lost = report.frames_lost();
            anyhow::ensure!(lost == 0, "{lost} frames sent by devices were not stored");
            Ok(())
        }
        Command::Ota { command } => {
            use eddy_cli::ota_tools;
            match command {
                OtaCommand::Keygen { out } => {
                    let (secret, public) = ota_tools::keygen(&out)?;
                    println!(
                        "secret key {} (keep it off devices and gateways)\npublic key {}",
                        secret.display(),
                        public.display()
                    );
                }
                OtaCommand::Sign {
                    key,
                    board,
                    version,
                    input,
                    output,
                } => {
                    let h = ota_tools::sign(&key, &board, &version, &input, &output)?;
                    println!(
                        "{}: board {}, version {}, {} payload bytes, signed",
                        output.display(),
                        h.board,
                        h.version,
                        h.payload_len
                    );
                }
                OtaCommand::Inspect { file, pubkey } => {
                    print!("{}", ota_tools::inspect(&file, pubkey.as_deref())?);
                }
                OtaCommand::Deploy {
                    image,
                    devices,
                    canary,
                    stages,
                    max_failures,
                    detach,
                    gateway,
                    token,
                } => {
                    let client = api(&gateway, &token)?;
                    let bytes = std::fs::read(&image)
                        .with_context(|| format!("reading {}", image.display()))?;
                    let d = client
                        .deploy(bytes, &devices, &canary, &stages, &max_failures)
                        .await?;
                    let c = &d.campaign;
                    println!(
                        "campaign {}: {} {} to {} devices in {} stages (canary {})",
                        c.id,
                        c.board,
                        c.version,
                        c.devices.len(),
                        c.boundaries.len(),
                        c.boundaries.first().copied().unwrap_or(0)
                    );
                    if !detach {
                        let end =
                            display::follow(&client, c.id, Duration::from_millis(500)).await?;
                        print!("{}", display::campaign_table(&end));
                        if let Status::Halted { reason } = &end.campaign.status {
                            anyhow::bail!("campaign {} halted: {reason}", c.id);
                        }
                    }
                }
                OtaCommand::Status {
                    campaign,
                    gateway,
                    token,
                } => {
                    let client = api(&gateway, &token)?;
                    match campaign {
                        Some(id) => {
                            print!("{}", display::campaign_table(&client.campaign(id).await?))
                        }
                        None => print!("{}", display::campaigns_table(&client.campaigns().await?)),
                    }
                }
                OtaCommand::Halt {
                    campaign,
                    gateway,
                    token,
                } => {
                    let d = api(&gateway, &token)?.halt(campaign).await?;
                    print!("{}", display::campaign_table(&d));
                }
            }
            Ok(())
        }
        Command::Flash {
            qemu: true,
            elf,
            config,
            ..
        } => {
            init_logging("info,rmqtt=error,rmqtt_net=warn,rmqtt_acl=warn,rmqtt_retainer=warn");
            let elf = match elf {
                Some(e) => e,
                None => eddy_cli::qemu::build_firmware(Path::new(".")).context(
                    "building the QEMU firmware (run from the repository root, or pass --elf)",
                )?,
            };
            let mut board = eddy_cli::qemu::QemuBoard::start(&elf)?;
            println!(
                "QEMU lm3s6965evb running {}; UART0 on {}",
                elf.display(),
                board.pty().display()
            );
            let mut config = match config {
                Some(path) => Config::load(&path)?,
                None => Config::default(),
            };
            config.serial = vec![eddy_gateway::sources::serial::SerialConfig {
                path: board.pty().to_path_buf(),
                baud: 115_200,
            }];
            config.validate()?;
            let gateway = Gateway::start(config).await?;
            let stats = gateway.stats().clone();
            let opened = tokio::time::timeout(Duration::from_secs(10), async {
                while stats.snapshot().serial_opens == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await;
            anyhow::ensure!(
                opened.is_ok(),
                "the gateway did not open {}",
                board.pty().display()
            );
            board.resume()?;
            println!("firmware running; Ctrl-C stops QEMU and the gateway");
            let token = gateway.shutdown_token();
            tokio::spawn(async move {
                stop_signal().await;
                token.cancel();
            });
            let result = gateway.wait().await;
            board.stop();
            Ok(result?)
        }
        Command::Flash { elf, chip, .. } => {
            let elf = elf.context("--elf FILE is required to flash hardware")?;
            let chip = chip.context("--chip NAME is required (see `probe-rs chip list`)")?;
            // probe-rs is the standard tool for debug probes (ST-Link,
            // J-Link, CMSIS-DAP); Eddy does not reinvent it.
            let status = std::process::Command::new("probe-rs")
                .args(["download", "--chip", &chip])
                .arg(&elf)
                .status()
                .context("running probe-rs (install: cargo install probe-rs-tools)")?;
            anyhow::ensure!(status.success(), "probe-rs failed: {status}");
            println!("flashed {} to {chip}", elf.display());
            Ok(())
        }
        Command::Query { args } => {
            let code = tokio::task::spawn_blocking(move || eddy_cli::external::run("query", &args))
                .await??;
            std::process::exit(code)
        }
        Command::Rules { command } => rules_command(command).await,
        Command::Token { command } => token_command(command).await,
        Command::Device { command } => device_command(command).await,
        Command::Alerts {
            history,
            url,
            token,
        } => {
            let client = api(&url, &token)?;
            let path = if history {
                "/api/alerts/history"
            } else {
                "/api/alerts"
            };
            let rows: serde_json::Value = client.json(Method::GET, path, Vec::new()).await?;
            println!("{}", serde_json::to_string_pretty(&rows)?);
            Ok(())
        }
        Command::Check { config } => {
            let c = Config::load(&config)?;
            let rules = eddy_gateway::rules::registry::check(&c)?;
            println!("{}: ok ({rules} rules)", config.display());
            Ok(())
        }
        Command::Salvage { damaged, into } => {
            // redb panics on some damaged pages; salvage catches those and
            // reports them per table, so the default hook's message would
            // only repeat them as noise.
            std::panic::set_hook(Box::new(|_| {}));
            let salvaged = eddy_gateway::store::Store::salvage(&damaged, &into);
            drop(std::panic::take_hook());
            let salvaged = salvaged?;
            for t in &salvaged.tables {
                println!("{:<14} {:>10} copied", t.table, t.copied);
                for u in &t.unreadable {
                    println!("{:<14} unreadable: {u}", "");
                }
            }
            if !salvaged.intact {
                println!(
                    "caution: {} fails redb's integrity check. Records on its damaged pages \
                     that still decode (valid names, finite values) were copied and cannot be \
                     told apart from what was stored.",
                    damaged.display()
                );
            }
            anyhow::ensure!(
                salvaged.complete(),
                "{} holds what could be read; what is listed above as unreadable is lost \
                 (exit status 1, so scripts notice)",
                into.display()
            );
            println!(
                "{}: every table read whole; {} passes redb's integrity check",
                into.display(),
                damaged.display()
            );
            Ok(())
        }
    }
}

async fn rules_command(command: RulesCommand) -> anyhow::Result<()> {
    match command {
        RulesCommand::Check { files } => {
            let mut failed = false;
            for file in &files {
                match eddy_gateway::rules::check_file(file) {
                    Ok(n) => println!("{}: ok ({n} rules)", file.display()),
                    Err(errors) => {
                        failed = true;
                        eprintln!("{errors}");
                    }
                }
            }
            anyhow::ensure!(!failed, "invalid rules");
            Ok(())
        }
        RulesCommand::List { url, token } => {
            let rules: serde_json::Value = api(&url, &token)?
                .json(Method::GET, "/api/rules", Vec::new())
                .await?;
            for r in rules.as_array().into_iter().flatten() {
                println!("{:<24} {}", r["name"].as_str().unwrap_or("?"), r["origin"]);
            }
            Ok(())
        }
        RulesCommand::Put {
            name,
            json,
            url,
            token,
        } => {
            let answer: serde_json::Value = api(&url, &token)?
                .json(
                    Method::PUT,
                    &format!("/api/rules/{name}"),
                    json.into_bytes(),
                )
                .await?;
            println!("{}", serde_json::to_string_pretty(&answer)?);
            Ok(())
        }
        RulesCommand::Delete { name, url, token } => {
            delete(&url, &token, &format!("/api/rules/{name}")).await?;
            println!("deleted {name}");
            Ok(())
        }
    }
}

async fn token_command(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create {
            name,
            scope,
            gateway,
        } => {
            let body = serde_json::json!({ "name": name, "scope": scope });
            let secret = create(&gateway, "/api/tokens", body, "token").await?;
            eprintln!("token `{name}` ({scope}), shown this once:");
            println!("{secret}");
            Ok(())
        }
        TokenCommand::List { gateway } => {
            print_list(&gateway, "/api/tokens", ["name", "scope"]).await
        }
        TokenCommand::Revoke { name, gateway } => {
            revoke(&gateway, &format!("/api/tokens/{name}"), &name).await
        }
    }
}

async fn device_command(command: DeviceCommand) -> anyhow::Result<()> {
    match command {
        DeviceCommand::Add { id, role, gateway } => {
            let body = serde_json::json!({ "device": id, "role": role });
            let secret = create(&gateway, "/api/credentials", body, "secret").await?;
            eprintln!(
                "device `{id}` ({role}): connect with user name `{id}` and this password, shown this once:"
            );
            println!("{secret}");
            Ok(())
        }
        DeviceCommand::List { gateway } => {
            print_list(&gateway, "/api/credentials", ["device", "role"]).await
        }
        DeviceCommand::Revoke { id, gateway } => {
            revoke(&gateway, &format!("/api/credentials/{id}"), &id).await
        }
    }
}

/// `POST path` with `body`: the answer's text field `field`.
async fn create(
    gateway: &Api,
    path: &str,
    body: serde_json::Value,
    field: &str,
) -> anyhow::Result<String> {
    let made: serde_json::Value = gateway
        .client()?
        .json(Method::POST, path, serde_json::to_vec(&body)?)
        .await?;
    let text = made[field].as_str();
    Ok(text
        .with_context(|| format!("no {field} in the answer"))?
        .to_string())
}

async fn revoke(gateway: &Api, path: &str, name: &str) -> anyhow::Result<()> {
    delete(&gateway.url, &gateway.token, path).await?;
    println!("revoked {name}");
    Ok(())
}

/// Prints the list at `path`: two text fields and the creation time.
async fn print_list(gateway: &Api, path: &str, [name, kind]: [&str; 2]) -> anyhow::Result<()> {
    let list: serde_json::Value = gateway
        .client()?
        .json(Method::GET, path, Vec::new())
        .await?;
    for t in list.as_array().into_iter().flatten() {
        println!(
            "{:<24} {:<8} created {}",
            t[name].as_str().unwrap_or("?"),
            t[kind].as_str().unwrap_or("?"),
            t["created_ms"]
        );
    }
    Ok(())
}

/// `DELETE path`, answered `204`.
async fn delete(url: &str, token: &TokenArgs, path: &str) -> anyhow::Result<()> {
    let (status, body) = api(url, token)?
        .call(Method::DELETE, path, Vec::new())
        .await?;
    anyhow::ensure!(
        status == 204,
        "the gateway refused ({status}): {}",
        String::from_utf8_lossy(&body)
    );
    Ok(())
}
