//! `eddy-query` (run as `eddy query`): SQL over the stored samples, from
//! the store file or, while a gateway runs, from its HTTP API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Parser;
use eddy_gateway::auth::{ADMIN_TOKEN_FILE, read_token_file};
use eddy_gateway::config::{Config, HttpConfig};
use eddy_gateway::samples::Params;
use eddy_gateway::store::{Store, StoreError};
use eddy_query::{Format, Spool, query, remote, spool_store};

/// SQL over the stored samples, table `samples` (device, metric, ts,
/// ts_ms, value, boot, seq), computed with polars. Reads the store file;
/// while a gateway runs on it (the file is locked), reads the samples
/// from that gateway's HTTP API instead.
#[derive(Parser, Debug)]
#[command(name = "eddy query", version)]
struct Args {
    /// e.g. "SELECT device, avg(value) AS mean FROM samples WHERE metric = 'temperature' GROUP BY device"
    #[arg(long)]
    sql: String,
    /// Read the samples from the gateway at this URL (`http://host:port`)
    /// instead of the store file.
    #[arg(long)]
    url: Option<String>,
    /// A file holding the gateway's API token (its first line; a read
    /// token does). Else `$EDDY_TOKEN`, else the gateway's
    /// `DATA_DIR/admin.token`.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// The gateway's config (for `data_dir`, and `[http] listen` when the
    /// gateway runs on it).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Override `data_dir`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Only samples from the last DURATION of event time (`90s`, `15m`, `2h`, `7d`).
    #[arg(long)]
    since: Option<String>,
    /// Only these devices (comma separated).
    #[arg(long)]
    device: Option<String>,
    /// Only these metrics (comma separated).
    #[arg(long)]
    metric: Option<String>,
    /// table, csv or parquet.
    #[arg(long, default_value = "table")]
    format: String,
    /// Write here instead of stdout (required for parquet).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// `90s`, `15m`, `2h`, `7d` in milliseconds: the same duration words as
/// `eddy.toml` (humantime).
fn parse_duration(s: &str) -> anyhow::Result<i64> {
    let d = humantime::parse_duration(s)
        .with_context(|| format!("`{s}`: expected a duration such as 90s, 15m, 2h or 7d"))?;
    i64::try_from(d.as_millis()).context("duration too long")
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The API token to send: `--token-file`, `$EDDY_TOKEN` (as for `eddy`'s
/// API commands), then `DATA_DIR/admin.token`, which a gateway writes at
/// its first start; none without any (the gateway's `401` then says
/// where tokens come from).
fn api_token(token_file: Option<&Path>, data_dir: &Path) -> anyhow::Result<Option<String>> {
    if let Some(path) = token_file {
        return read_token_file(path)
            .map(Some)
            .with_context(|| format!("--token-file {}", path.display()));
    }
    if let Ok(token) = std::env::var("EDDY_TOKEN")
        && !token.trim().is_empty()
    {
        return Ok(Some(token.trim().to_string()));
    }
    let admin = data_dir.join(ADMIN_TOKEN_FILE);
    match read_token_file(&admin) {
        Ok(token) => Ok(Some(token)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", admin.display())),
    }
}

/// Where a gateway with this `[http]` section answers on this machine.
fn local_url(http: &HttpConfig) -> anyhow::Result<String> {
    anyhow::ensure!(
        http.enabled,
        "its HTTP port is disabled (`[http] enabled = false`): stop the gateway, or enable the port"
    );
    let mut addr: SocketAddr = http.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => [127, 0, 0, 1].into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Ok(format!("http://{addr}"))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let format = Format::parse(&args.format)
        .with_context(|| format!("--format {}: expected table, csv or parquet", args.format))?;
    let from = args
        .since
        .as_deref()
        .map(|s| parse_duration(s).map(|d| (wall_ms() - d).to_string()))
        .transpose()
        .context("--since")?;
    let params = Params {
        from,
        to: None,
        device: args.device,
        metric: args.metric,
    };
    let filter = params.filter().map_err(|e| anyhow::anyhow!("--{e}"))?;
    query::check(&args.sql)?;
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    let token = || api_token(args.token_file.as_deref(), &config.data_dir);
    let mut spool = Spool::create()?;
    match &args.url {
        Some(url) => {
            remote::spool_remote(url, token()?, &params, &mut spool)?;
        }
        None => {
            let path = config.data_dir.join(eddy_gateway::STORE_FILE);
            anyhow::ensure!(path.exists(), "no store at {}", path.display());
            match Store::open(&path) {
                Ok(store) => spool_store(&store, &filter, &mut spool)?,
                Err(StoreError::InUse { .. }) => {
                    let url = local_url(&config.http).with_context(|| {
                        format!("{} is in use by a running gateway", path.display())
                    })?;
                    eprintln!(
                        "eddy query: {} is in use by a running gateway; reading its samples \
                         from {url}/api/samples",
                        path.display()
                    );
                    remote::spool_remote(&url, token()?, &params, &mut spool)?;
                }
                Err(e) => return Err(e).context("opening the store"),
            }
        }
    }
    let samples = spool.finish()?;
    let mut result = query::run(&samples, &args.sql)?;
    query::write(&mut result, format, args.out.as_deref())?;
    Ok(())
}
