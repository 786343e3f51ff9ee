//! How the CLI shows campaigns: tables for `eddy ota status`, and a
//! progress bar while `eddy ota deploy` follows one (plain lines when
//! stderr is not a terminal).

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use eddy_gateway::campaign::api::{Detail, Summary};
use eddy_gateway::campaign::{DeviceState, Status};

use crate::client::{Campaigns, Client, ClientError};

fn status_text(status: &Status) -> String {
    match status {
        Status::Running => "running".into(),
        Status::Completed => "completed".into(),
        Status::Halted { reason } => format!("halted: {reason}"),
    }
}

fn state_text(state: &DeviceState, payload_len: u32) -> String {
    match state {
        DeviceState::Pending => "pending".into(),
        DeviceState::Transferring { acked } => {
            let pct = u64::from(*acked) * 100 / u64::from(payload_len.max(1));
            format!("transferring {pct}%")
        }
        DeviceState::Verified => "verified, restarting".into(),
        DeviceState::Confirmed { version } => format!("confirmed {version}"),
        DeviceState::Rejected { reason } => format!("rejected: {reason}"),
        DeviceState::RolledBack { version } => format!("rolled back to {version}"),
        DeviceState::Failed { reason } => format!("failed: {reason}"),
        DeviceState::Skipped => "skipped".into(),
    }
}

/// One line per campaign.
pub fn campaigns_table(campaigns: &[Summary]) -> String {
    let mut out = format!(
        "{:>4}  {:<16} {:<9} {:>7} {:>9} {:>6} {:>7}  {}\n",
        "id", "board", "version", "devices", "confirmed", "failed", "stage", "status"
    );
    for c in campaigns {
        let _ = writeln!(
            out,
            "{:>4}  {:<16} {:<9} {:>7} {:>9} {:>6} {:>7}  {}",
            c.id,
            c.board,
            c.version,
            c.counts.devices,
            c.counts.confirmed,
            c.counts.failed,
            format!("{}/{}", c.stage + 1, c.stages),
            status_text(&c.status)
        );
    }
    out
}

/// A campaign with one line per device.
pub fn campaign_table(d: &Detail) -> String {
    let c = &d.campaign;
    let mut out = format!(
        "campaign {}: {} {} to `{}` ({} devices), stage {}/{}, {}\n\
         confirmed {}, failed {}, in progress {}, pending {}, skipped {}\n\n",
        c.id,
        c.board,
        c.version,
        c.selector,
        d.counts.devices,
        c.stage + 1,
        c.boundaries.len(),
        status_text(&c.status),
        d.counts.confirmed,
        d.counts.failed,
        d.counts.in_progress,
        d.counts.pending,
        d.counts.skipped,
    );
    let _ = writeln!(
        out,
        "{:<32} {:>5} {:>10} {:>7}  state",
        "device", "stage", "bytes sent", "resent"
    );
    for e in &c.devices {
        let _ = writeln!(
            out,
            "{:<32} {:>5} {:>10} {:>7}  {}",
            e.device,
            if e.stage == 0 {
                "canary".to_string()
            } else {
                e.stage.to_string()
            },
            e.bytes_sent,
            e.chunks_resent,
            state_text(&e.state, c.payload_len)
        );
    }
    out
}

/// Follows a campaign until it completes or halts; returns its last
/// state. A progress bar on a terminal, a line per change otherwise.
pub async fn follow(client: &Client, id: u32, poll: Duration) -> Result<Detail, ClientError> {
    let terminal = std::io::stderr().is_terminal();
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if terminal {
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
    } else {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let mut last = String::new();
    loop {
        let d = client.campaign(id).await?;
        let c = &d.counts;
        let done = c.confirmed + c.failed + c.skipped;
        let line = format!(
            "stage {}/{}: {} confirmed, {} failed, {} in progress, {} pending",
            d.campaign.stage + 1,
            d.campaign.boundaries.len(),
            c.confirmed,
            c.failed,
            c.in_progress,
            c.pending
        );
        bar.set_length(c.devices as u64);
        bar.set_position(done as u64);
        bar.set_message(line.clone());
        if !terminal && line != last {
            eprintln!("campaign {id}: {line}");
        }
        last = line;
        if d.campaign.status != Status::Running {
            bar.finish_and_clear();
            return Ok(d);
        }
        tokio::time::sleep(poll).await;
    }
}
