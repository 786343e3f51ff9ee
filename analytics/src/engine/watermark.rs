//! Watermarks: a view's (the newest event time less its lateness) and a
//! group's (its source's own, within the allowed skew of the newest
//! source's); the idle watermark that moves event time on without data.

use super::{Engine, Output, to_ms};

/// The watermark of a group fed by one source: the source's newest event
/// time less the view's lateness, but never more than `skew_ms` behind
/// the view's `global` watermark, nor behind `idle` (all event time, ms).
#[inline]
pub(super) fn source_watermark(
    source_max_ms: i64,
    lateness_ms: i64,
    global: i64,
    skew_ms: i64,
    idle: i64,
) -> i64 {
    source_max_ms
        .saturating_sub(lateness_ms)
        .max(global.saturating_sub(skew_ms))
        .max(idle)
}

impl Engine {
    /// The newest event time seen.
    pub fn max_event_ms(&self) -> Option<i64> {
        self.st.max_event_ms
    }

    /// The default view's watermark for sources in step with the newest:
    /// windows ending at or before it are closed.
    pub fn watermark_ms(&self) -> i64 {
        self.global_watermark(0)
    }

    /// The watermark of `view` for groups spanning sources (and for
    /// sources in step with the newest).
    #[inline]
    pub(super) fn global_watermark(&self, view: usize) -> i64 {
        let lateness = to_ms(self.views[view].allowed_lateness_ms);
        let from_events = self
            .st
            .max_event_ms
            .map_or(i64::MIN, |m| m.saturating_sub(lateness));
        from_events.max(self.st.idle_watermark)
    }

    /// The watermark of a group: its source's, within the allowed skew of
    /// the newest source; the newest source's for shared groups.
    #[inline]
    pub(super) fn group_watermark(&self, view: usize, source: Option<u32>, global: i64) -> i64 {
        let Some(d) = source else {
            return global;
        };
        source_watermark(
            self.st
                .source_max
                .get(d as usize)
                .copied()
                .unwrap_or(i64::MIN),
            to_ms(self.views[view].allowed_lateness_ms),
            global,
            to_ms(self.config.max_source_skew_ms),
            self.st.idle_watermark,
        )
    }

    /// Moves every watermark to at least `watermark_ms` (never backwards)
    /// and closes what it passes. Sources call this when event time
    /// advances without samples (an idle fleet).
    pub fn advance_to(&mut self, watermark_ms: i64, out: &mut Output) {
        if watermark_ms <= self.st.idle_watermark {
            return;
        }
        self.st.idle_watermark = watermark_ms;
        self.evict_due();
        let mut closed = Vec::new();
        self.close_all(&mut closed);
        self.finish(closed, out);
    }
}
