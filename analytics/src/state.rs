//! The window state of one group in one view, for each window kind: what
//! a sample does to it, what the watermark closes, and what is open now.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::{Aggregates, WindowKind};

/// Open tumbling or hopping windows, the usual single one inline (no
/// pointer to chase on the hot path).
pub(crate) type Open = SmallVec<[(i64, Aggregates); 1]>;

/// Most samples a sliding or count window keeps per group; beyond it the
/// oldest are dropped (and counted by the engine).
pub const MAX_RETAINED: usize = 100_000;

/// An emitted window: start, end, aggregates.
pub(crate) type Emitted = (i64, i64, Aggregates);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Session {
    start: i64,
    last: i64,
    agg: Aggregates,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum WindowState {
    /// Tumbling and hopping: open windows by start, sorted.
    Fixed(Open),
    /// Samples sorted by event time (ties in arrival order); those after
    /// `emitted` still owe their window.
    Sliding {
        samples: VecDeque<(i64, f64)>,
        emitted: usize,
    },
    /// Open sessions, sorted by start.
    Session(Vec<Session>),
    /// Samples of the current count window (arrival order) and how many
    /// arrived in all.
    Count {
        buf: VecDeque<(i64, f64)>,
        seen: u64,
    },
}

fn aggregate<'a>(samples: impl Iterator<Item = &'a (i64, f64)>, quantiles: bool) -> Aggregates {
    let mut agg = Aggregates::new(quantiles);
    for &(ts, v) in samples {
        agg.add(ts, v);
    }
    agg
}

impl WindowState {
    pub(crate) fn new(kind: &WindowKind) -> Self {
        match kind {
            WindowKind::Tumbling { .. } | WindowKind::Hopping { .. } => Self::Fixed(Open::new()),
            WindowKind::Sliding { .. } => Self::Sliding {
                samples: VecDeque::new(),
                emitted: 0,
            },
            WindowKind::Session { .. } => Self::Session(Vec::new()),
            WindowKind::Count { .. } => Self::Count {
                buf: VecDeque::new(),
                seen: 0,
            },
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        match self {
            Self::Fixed(open) => open.is_empty(),
            Self::Sliding { samples, .. } => samples.is_empty(),
            Self::Session(s) => s.is_empty(),
            Self::Count { buf, .. } => buf.is_empty(),
        }
    }

    /// Adds a sample. Count windows emit at once into `out`. Returns the
    /// earliest event time at which this state may close something, and
    /// whether a retained sample had to be dropped at [`MAX_RETAINED`].
    #[inline]
    pub(crate) fn add(
        &mut self,
        kind: &WindowKind,
        quantiles: bool,
        ts: i64,
        value: f64,
        out: &mut Vec<Emitted>,
    ) -> (i64, bool) {
        match (self, *kind) {
            (Self::Fixed(open), WindowKind::Tumbling { size_ms }) => {
                let size = size_ms as i64;
                let start = ts.div_euclid(size) * size;
                window_at(open, start, quantiles).add(ts, value);
                (start.saturating_add(size), false)
            }
            (Self::Fixed(open), WindowKind::Hopping { size_ms, hop_ms }) => {
                let (size, hop) = (size_ms as i64, hop_ms as i64);
                let mut start = ts.div_euclid(hop) * hop;
                let mut first_end = i64::MAX;
                while start > ts.saturating_sub(size) {
                    window_at(open, start, quantiles).add(ts, value);
                    first_end = start.saturating_add(size);
                    start -= hop;
                }
                (first_end, false)
            }
            (Self::Sliding { samples, emitted }, WindowKind::Sliding { .. }) => {
                let at = samples.partition_point(|s| s.0 <= ts);
                samples.insert(at, (ts, value));
                let dropped = samples.len() > MAX_RETAINED;
                if dropped {
                    samples.pop_front();
                    *emitted = emitted.saturating_sub(1);
                }
                (ts, dropped)
            }
            (Self::Session(sessions), WindowKind::Session { gap_ms, max_ms }) => {
                let gap = gap_ms as i64;
                let fits = |s: &Session| {
                    let within =
                        ts > s.start.saturating_sub(gap) && ts < s.last.saturating_add(gap);
                    let short = max_ms.is_none_or(|m| ts.max(s.last) - ts.min(s.start) < m as i64);
                    within && short
                };
                let mut joined: Option<usize> = None;
                let mut i = 0;
                while i < sessions.len() {
                    if fits(&sessions[i]) {
                        match joined {
                            None => {
                                let s = &mut sessions[i];
                                s.agg.add(ts, value);
                                s.start = s.start.min(ts);
                                s.last = s.last.max(ts);
                                joined = Some(i);
                            }
                            Some(j) => {
                                // The sample bridges two sessions.
                                let other = sessions.remove(i);
                                let s = &mut sessions[j];
                                s.agg.merge(&other.agg);
                                s.start = s.start.min(other.start);
                                s.last = s.last.max(other.last);
                                continue;
                            }
                        }
                    }
                    i += 1;
                }
                let close = match joined {
                    Some(j) => sessions[j].last.saturating_add(gap),
                    None => {
                        let mut agg = Aggregates::new(quantiles);
                        agg.add(ts, value);
                        let at = sessions.partition_point(|s| s.start <= ts);
                        sessions.insert(
                            at,
                            Session {
                                start: ts,
                                last: ts,
                                agg,
                            },
                        );
                        ts.saturating_add(gap)
                    }
                };
                (close, false)
            }
            (Self::Count { buf, seen }, WindowKind::Count { n, hop }) => {
                buf.push_back((ts, value));
                *seen += 1;
                let n = n as usize;
                match hop {
                    None => {
                        if buf.len() >= n {
                            out.push(emit_count(buf.iter(), quantiles));
                            buf.clear();
                        }
                    }
                    Some(h) => {
                        if buf.len() > n {
                            buf.pop_front();
                        }
                        if buf.len() == n && (*seen - n as u64).is_multiple_of(h) {
                            out.push(emit_count(buf.iter(), quantiles));
                        }
                    }
                }
                (i64::MAX, false)
            }
            _ => (i64::MAX, false),
        }
    }

    /// Closes what the watermark passed into `out`; returns the earliest
    /// event time at which something left may close.
    pub(crate) fn close(
        &mut self,
        kind: &WindowKind,
        quantiles: bool,
        watermark: i64,
        out: &mut Vec<Emitted>,
    ) -> i64 {
        match (self, *kind) {
            (Self::Fixed(open), WindowKind::Tumbling { size_ms })
            | (Self::Fixed(open), WindowKind::Hopping { size_ms, .. }) => {
                let size = size_ms as i64;
                let n = open.partition_point(|(start, _)| start.saturating_add(size) <= watermark);
                out.extend(
                    open.drain(..n)
                        .map(|(start, agg)| (start, start.saturating_add(size), agg)),
                );
                open.first()
                    .map_or(i64::MAX, |(start, _)| start.saturating_add(size))
            }
            (Self::Sliding { samples, emitted }, WindowKind::Sliding { size_ms }) => {
                let size = size_ms as i64;
                // Every sample before the watermark gets its window
                // (ts - size, ts]: no sample still to come can fall in it.
                let due = samples.partition_point(|s| s.0 < watermark);
                for i in *emitted..due {
                    let end = samples[i].0;
                    let from = samples.partition_point(|s| s.0 <= end.saturating_sub(size));
                    // Ties with the last sample belong to its window too.
                    let to = samples.partition_point(|s| s.0 <= end);
                    let agg = aggregate(samples.range(from..to), quantiles);
                    out.push((end.saturating_sub(size) + 1, end.saturating_add(1), agg));
                }
                *emitted = (*emitted).max(due);
                // Samples no future window can reach.
                let keep = samples.partition_point(|s| s.0 <= watermark.saturating_sub(size));
                let keep = keep.min(*emitted);
                samples.drain(..keep);
                *emitted -= keep;
                samples.get(*emitted).map_or(i64::MAX, |s| s.0)
            }
            (Self::Session(sessions), WindowKind::Session { gap_ms, .. }) => {
                let gap = gap_ms as i64;
                let mut next = i64::MAX;
                sessions.retain_mut(|s| {
                    if s.last.saturating_add(gap) <= watermark {
                        let agg = std::mem::replace(&mut s.agg, Aggregates::new(false));
                        out.push((s.start, s.last.saturating_add(gap), agg));
                        false
                    } else {
                        next = next.min(s.last.saturating_add(gap));
                        true
                    }
                });
                next
            }
            _ => i64::MAX,
        }
    }

    /// The windows open now, as a live query sees them.
    pub(crate) fn open(&self, kind: &WindowKind, quantiles: bool, out: &mut Vec<Emitted>) {
        match (self, *kind) {
            (Self::Fixed(open), WindowKind::Tumbling { size_ms })
            | (Self::Fixed(open), WindowKind::Hopping { size_ms, .. }) => {
                let size = size_ms as i64;
                out.extend(
                    open.iter()
                        .map(|(start, agg)| (*start, start.saturating_add(size), agg.clone())),
                );
            }
            (Self::Sliding { samples, .. }, WindowKind::Sliding { size_ms }) => {
                if let Some(&(end, _)) = samples.back() {
                    let size = size_ms as i64;
                    let from = samples.partition_point(|s| s.0 <= end.saturating_sub(size));
                    let agg = aggregate(samples.range(from..), quantiles);
                    out.push((end.saturating_sub(size) + 1, end.saturating_add(1), agg));
                }
            }
            (Self::Session(sessions), WindowKind::Session { gap_ms, .. }) => {
                out.extend(
                    sessions
                        .iter()
                        .map(|s| (s.start, s.last.saturating_add(gap_ms as i64), s.agg.clone())),
                );
            }
            (Self::Count { buf, .. }, WindowKind::Count { .. }) if !buf.is_empty() => {
                out.push(emit_count(buf.iter(), quantiles));
            }
            _ => {}
        }
    }

    /// Heap bytes held, roughly.
    pub(crate) fn heap_bytes(&self) -> usize {
        let agg = std::mem::size_of::<Aggregates>();
        match self {
            Self::Fixed(open) => {
                open.capacity() * (8 + agg)
                    + open.iter().map(|(_, a)| a.heap_bytes()).sum::<usize>()
            }
            Self::Sliding { samples, .. } => samples.capacity() * 16,
            Self::Session(s) => {
                s.capacity() * std::mem::size_of::<Session>()
                    + s.iter().map(|s| s.agg.heap_bytes()).sum::<usize>()
            }
            Self::Count { buf, .. } => buf.capacity() * 16,
        }
    }
}

fn window_at(open: &mut Open, start: i64, quantiles: bool) -> &mut Aggregates {
    // Usually the last window: samples mostly arrive in order.
    let i = match open.last() {
        Some((s, _)) if *s == start => open.len() - 1,
        _ => match open.binary_search_by_key(&start, |(s, _)| *s) {
            Ok(i) => i,
            Err(i) => {
                open.insert(i, (start, Aggregates::new(quantiles)));
                i
            }
        },
    };
    &mut open[i].1
}

fn emit_count<'a>(
    samples: impl Iterator<Item = &'a (i64, f64)> + Clone,
    quantiles: bool,
) -> Emitted {
    let agg = aggregate(samples.clone(), quantiles);
    let start = samples.clone().map(|s| s.0).min().unwrap_or(0);
    let end = samples.map(|s| s.0).max().unwrap_or(0).saturating_add(1);
    (start, end, agg)
}
