//! Acknowledge and publish, once a batch committed.
//!
//! Input: the batch's source messages, its rendered results and alert
//! dispatch, the devices whose frames were admitted. Output: broker
//! acknowledgements (the broker may forget the messages now), `Ack`
//! frames to Eddy devices, results on the local broker, the upstream sink
//! told the outbox grew, webhooks queued and device commands sent.

use eddy_analytics::{AlertState, Output};
use eddy_proto::{Ack, Frame};
use tracing::warn;

use super::Pipeline;
use super::render::Rendered;
use crate::rules::actions::{Dispatch, Effects};
use crate::sinks::Guarantee;
use crate::sources::{AckToken, Message};
use crate::stats;

impl Pipeline {
    /// Acknowledges the batch's messages to their source.
    pub(super) fn acknowledge(&self, messages: &mut Vec<Message>) {
        let tokens: Vec<AckToken> = messages.drain(..).map(|m| m.ack).collect();
        if let Err(e) = self.parts.acker.acknowledge(&tokens) {
            warn!(error = %e, "the source will redeliver what was not acknowledged");
        }
    }

    /// Publishes a committed batch's results and runs its alerts' effects.
    pub(super) async fn publish(
        &mut self,
        out: &Output,
        windows: Vec<Rendered>,
        dispatch: Dispatch,
        outbox_grew: bool,
    ) {
        let stats = &self.parts.stats;
        stats::add(&stats.windows_closed, out.windows.len() as u64);
        for a in &out.alerts {
            let counter = match a.state {
                AlertState::Firing if !a.repeat => &stats.alerts_fired,
                AlertState::Resolved => &stats.alerts_resolved,
                _ => &stats.alerts_other,
            };
            stats::add(counter, 1);
        }
        for r in windows.into_iter().chain(dispatch.local) {
            self.parts.local.publish(r, Guarantee::AtLeastOnce).await;
        }
        if outbox_grew {
            self.parts.outbox_head.grew();
        }
        let effects = Effects {
            webhooks: &self.parts.webhooks,
            local: &*self.parts.local,
            stats: &self.parts.stats,
        };
        effects.run(dispatch.effects, &mut self.command_id).await;
    }

    /// The late output, QoS 0 (the samples themselves are stored).
    pub(super) async fn publish_late(&self, late: Vec<Rendered>) {
        for r in late {
            self.parts.local.publish(r, Guarantee::AtMostOnce).await;
        }
    }

    /// Tells `device` which of its frames are durably stored. Acks are
    /// cumulative and QoS 0: a lost one is made good by the next.
    pub(super) async fn send_ack(&self, device: String) {
        let Some(state) = self.sequencer.get(&device) else {
            return;
        };
        let Ok(id) = eddy_proto::DeviceId::try_from(device.as_str()) else {
            return;
        };
        let frame = Frame::Ack(Ack {
            device: id,
            boot: state.boot,
            seq: state.acked(),
        });
        let mut buf = [0u8; 64];
        let Ok(bytes) = eddy_proto::encode(&frame, &mut buf) else {
            return;
        };
        let ack = Rendered {
            topic: format!("{device}/{}", eddy_proto::topic::ACK),
            payload: bytes.to_vec(),
            retain: false,
        };
        if self.parts.local.publish(ack, Guarantee::AtMostOnce).await {
            stats::add(&self.parts.stats.acks_sent, 1);
        }
    }
}
