//! A simulated device on a serial line: the firmware core's `Node` and
//! `Backlog` exchanging COBS/CRC frames (`eddy_proto::link`) over any byte
//! stream — a pty in the testbench, behind the gateway's serial bridge.
//! It sends a `Hello`, then telemetry; it applies `Ack`s and commands
//! from the line, and resends what was not acknowledged after a timeout.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eddy_firmware::{Backlog, Node, Sensor};
use eddy_proto::link::{FrameDecoder, MAX_WIRE_LEN, encode_framed};
use eddy_proto::{Frame, Hello};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::device::{RESEND_AFTER, SIM_BACKLOG, SimOutputs};
use crate::sim::SimSensor;
use crate::{DeviceReport, SimError};

/// How a serial device runs.
#[derive(Debug, Clone)]
pub struct SerialDeviceConfig {
    pub device: String,
    pub interval_ms: u32,
    pub start_offset: Duration,
    pub duration: Duration,
    pub drain_timeout: Duration,
}

async fn send<S: AsyncWrite + Unpin>(port: &mut S, frame: &Frame) -> bool {
    let mut buf = [0u8; MAX_WIRE_LEN];
    match encode_framed(frame, &mut buf) {
        Ok(bytes) => port.write_all(bytes).await.is_ok(),
        Err(_) => false,
    }
}

/// Runs the device on `port` until its duration passed (or `stop`), then
/// waits (bounded) until every frame was acknowledged.
pub async fn run_serial_device<S: AsyncRead + AsyncWrite + Unpin>(
    config: SerialDeviceConfig,
    mut sensors: Vec<SimSensor>,
    mut port: S,
    stop: CancellationToken,
) -> Result<DeviceReport, SimError> {
    let setup = |reason: String| SimError::Setup {
        device: config.device.clone(),
        reason,
    };
    let boot = rand::random::<u32>();
    let mut node =
        Node::new(&config.device, boot, config.interval_ms).map_err(|e| setup(format!("{e:?}")))?;
    let mut backlog: Box<Backlog<SIM_BACKLOG>> = Box::new(Backlog::new(boot));
    let mut outputs = SimOutputs::default();
    let mut report = DeviceReport {
        device: config.device.clone(),
        boot,
        ..DeviceReport::default()
    };
    let hello = Frame::Hello(Hello {
        device: config
            .device
            .as_str()
            .try_into()
            .map_err(|_| setup("device id".into()))?,
        board: "sim-serial".try_into().map_err(|_| setup("board".into()))?,
        firmware: "0.1.0".try_into().map_err(|_| setup("version".into()))?,
    });
    send(&mut port, &hello).await;
    let start = Instant::now();
    let now_ms = || u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    tokio::select! {
        () = tokio::time::sleep(config.start_offset) => {}
        () = stop.cancelled() => {}
    }
    let deadline = start + config.duration;
    let mut drain_deadline = deadline + config.drain_timeout;
    let mut sampling = true;
    let mut decoder = FrameDecoder::new();
    let mut buf = [0u8; 1024];
    let mut resend_check = tokio::time::interval(RESEND_AFTER / 4);
    let resend_ms = u64::try_from(RESEND_AFTER.as_millis()).unwrap_or(u64::MAX);
    loop {
        if sampling && (stop.is_cancelled() || Instant::now() >= deadline) {
            sampling = false;
            drain_deadline = Instant::now() + config.drain_timeout;
        }
        if !sampling && (backlog.is_empty() || Instant::now() >= drain_deadline) {
            break;
        }
        let wait = Duration::from_millis(node.due_in(now_ms()));
        tokio::select! {
            () = tokio::time::sleep(wait), if sampling => {
                let wall = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
                let sampled = {
                    let mut all: Vec<&mut dyn Sensor> =
                        sensors.iter_mut().map(|s| s.as_mut() as &mut dyn Sensor).collect();
                    all.push(&mut outputs);
                    node.poll(now_ms(), wall, &mut all)
                };
                if let Some(mut t) = sampled {
                    backlog.push(&mut t, now_ms());
                    report.sent += 1;
                    report.readings += t.readings.len() as u64;
                    send(&mut port, &Frame::Telemetry(t)).await;
                }
            }
            read = port.read(&mut buf) => {
                let n = match read {
                    Ok(0) | Err(_) => {
                        // The line is down (no reader yet): wait and retry.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    Ok(n) => n,
                };
                let mut frames = Vec::new();
                decoder.feed(&buf[..n], |r| {
                    if let Ok(f) = r {
                        frames.push(f);
                    }
                });
                for frame in frames {
                    match &frame {
                        Frame::Ack(ack) if ack.device == node.device() => {
                            backlog.ack(ack, now_ms());
                        }
                        Frame::Command(_) => match node.handle(&frame, &mut outputs) {
                            Ok(()) => report.commands_applied += 1,
                            Err(_) => report.commands_refused += 1,
                        },
                        _ => {}
                    }
                }
            }
            _ = resend_check.tick() => {
                if backlog.timed_out(now_ms(), resend_ms) {
                    let frames: Vec<Frame> =
                        backlog.resend(now_ms()).map(|t| Frame::Telemetry(t.clone())).collect();
                    debug!(device = %config.device, frames = frames.len(), "resending");
                    for f in &frames {
                        send(&mut port, f).await;
                    }
                    report.retransmitted += frames.len() as u64;
                }
            }
            () = tokio::time::sleep_until(deadline), if sampling => {}
            () = tokio::time::sleep_until(drain_deadline), if !sampling => {}
        }
    }
    report.dropped = backlog.dropped();
    report.acked = report
        .sent
        .saturating_sub(report.dropped)
        .saturating_sub(backlog.len() as u32);
    report.boots = vec![(boot, report.sent)];
    Ok(report)
}
