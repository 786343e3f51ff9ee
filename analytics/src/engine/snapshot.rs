//! Snapshots: the engine's whole state as bytes, to resume open windows
//! and alerts after a restart.
//!
//! Format (version [`SNAPSHOT_VERSION`]):
//!
//! | bytes | what |
//! |---|---|
//! | 0 | the format version, `5` |
//! | 1..9 | the configuration's fingerprint, u64 little-endian (see [`fingerprint`]) |
//! | 9.. | postcard of `(rules, State)`: the rules running, then the engine's state |
//!
//! A snapshot restores only into an engine with the same fingerprint
//! (the same base views and `max_series`, whose state it holds); the
//! rules may differ (see [`Engine::restore`]). A snapshot of another
//! format version or fingerprint, or one that does not decode, is
//! refused with [`EngineError::Snapshot`] saying why; the caller starts a
//! fresh engine instead (the gateway does: its open windows start empty).
//!
//! Versions: 3 took the fingerprint over the `Debug` text of the views,
//! which no format promises to keep; 4 takes it over the fields. The
//! state's layout is the same in both. 5 has rules over several metrics
//! (`Rule::metrics`, terms naming a metric and a scope), the level
//! windows group comparisons keep (`State::levels`) and the count of
//! those dropped. A change of the layout or of the fingerprint's encoding
//! bumps the version, and `tests/snapshot_fixture.rs` keeps a snapshot of
//! every version.

use super::spec::base_views;
use super::{Engine, EngineConfig, EngineError, State, ViewSpec};
use crate::rule::{Match, Rule, SeriesFilter, ValueRange};
use crate::{DeviceLevel, Field, GroupBy, WindowKind};

/// Format of [`Engine::snapshot`].
const SNAPSHOT_VERSION: u8 = 5;

/// Bytes before the body: the version and the fingerprint.
const HEADER: usize = 1 + 8;

impl Engine {
    /// The engine's whole state, to resume open windows after a restart
    /// (see [`Engine::restore`]). Fails only if the state does not
    /// serialize.
    pub fn snapshot(&self) -> Result<Vec<u8>, EngineError> {
        let rules: Vec<&Rule> = self.rules().collect();
        let body = postcard::to_allocvec(&(rules, &self.st))
            .map_err(|e| EngineError::Snapshot(e.to_string()))?;
        let mut out = Vec::with_capacity(HEADER + body.len());
        out.push(SNAPSHOT_VERSION);
        out.extend_from_slice(
            &fingerprint(&self.views[..self.base_views], self.config.max_series).to_le_bytes(),
        );
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// An engine with `config` and `rules` resumed from a snapshot taken
    /// with the same views. Rules may differ: those unchanged since the
    /// snapshot keep their windows and alerts (as [`Engine::set_rules`]).
    ///
    /// Fails with [`EngineError::Snapshot`] for a snapshot of another
    /// format version, of other views or `max_series`, or damaged; with
    /// the configuration's own error if `config` or `rules` are invalid.
    pub fn restore(
        config: EngineConfig,
        rules: Vec<Rule>,
        snapshot: &[u8],
    ) -> Result<Self, EngineError> {
        let (&version, rest) = snapshot
            .split_first()
            .ok_or_else(|| EngineError::Snapshot("empty".into()))?;
        if version != SNAPSHOT_VERSION {
            return Err(EngineError::Snapshot(format!(
                "format {version}, this build reads format {SNAPSHOT_VERSION}"
            )));
        }
        let (print, body) = rest
            .split_first_chunk::<8>()
            .ok_or_else(|| EngineError::Snapshot("truncated".into()))?;
        let print = u64::from_le_bytes(*print);
        let expected = fingerprint(&base_views(&config)?, config.max_series);
        if print != expected {
            return Err(EngineError::Snapshot(format!(
                "taken with other views or max_series (fingerprint {print:016x}, this \
                 configuration's {expected:016x})"
            )));
        }
        let (then, st): (Vec<Rule>, State) =
            postcard::from_bytes(body).map_err(|e| EngineError::Snapshot(e.to_string()))?;
        let mut engine = Self::new(config, then)
            .map_err(|e| EngineError::Snapshot(format!("its rules: {e}")))?;
        if st.views.len() != engine.views.len() {
            return Err(EngineError::Snapshot("view count differs".into()));
        }
        engine.st = st;
        engine.set_rules(rules)?;
        Ok(engine)
    }
}

/// Identifies what a snapshot's state depends on: the base views (the
/// default and the configured ones, every field) and `max_series` (the
/// caps inside the state).
///
/// FNV-1a (64 bit) over an explicit encoding, so the same configuration
/// gives the same number in every process, build and machine (neither
/// `Hash`, whose output for std types may change between Rust releases
/// and is native-endian, nor foldhash, seeded per process): `max_series`
/// and the number of views as u64, then each view's fields in
/// declaration order; integers little-endian at their width, floats as
/// their bits (a u64), booleans as a byte, strings and lists length-first
/// (a u64), options and enum variants as a tag byte (declaration
/// order, from 0) before their fields. Changing this encoding changes
/// every fingerprint: bump [`SNAPSHOT_VERSION`].
fn fingerprint(views: &[ViewSpec], max_series: usize) -> u64 {
    let mut h = Fnv::new();
    h.len(max_series);
    h.len(views.len());
    for view in views {
        h.view(view);
    }
    h.0
}

/// FNV-1a, 64 bit, with the encoding of [`fingerprint`]. Deliberately
/// not a [`std::hash::Hasher`]: derived `Hash` is not a stable encoding.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn u8(&mut self, v: u8) {
        self.bytes(&[v]);
    }

    fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }

    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }

    fn len(&mut self, n: usize) {
        self.u64(n as u64);
    }

    fn f64(&mut self, v: f64) {
        self.u64(v.to_bits());
    }

    fn str(&mut self, s: &str) {
        self.len(s.len());
        self.bytes(s.as_bytes());
    }

    fn option<T>(&mut self, v: Option<T>, some: impl FnOnce(&mut Self, T)) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                some(self, v);
            }
        }
    }

    // Each type is destructured whole, so a new field fails to compile
    // here until it is placed in the encoding.

    fn view(&mut self, view: &ViewSpec) {
        let ViewSpec {
            name,
            window,
            group_by,
            metric,
            quantiles,
            allowed_lateness_ms,
            publish,
            filter,
        } = view;
        self.str(name);
        self.window(window);
        self.group_by(group_by);
        self.option(metric.as_deref(), Self::str);
        self.bool(*quantiles);
        self.u64(*allowed_lateness_ms);
        self.bool(*publish);
        self.filter(filter);
    }

    fn window(&mut self, window: &WindowKind) {
        match *window {
            WindowKind::Tumbling { size_ms } => {
                self.u8(0);
                self.u64(size_ms);
            }
            WindowKind::Hopping { size_ms, hop_ms } => {
                self.u8(1);
                self.u64(size_ms);
                self.u64(hop_ms);
            }
            WindowKind::Sliding { size_ms } => {
                self.u8(2);
                self.u64(size_ms);
            }
            WindowKind::Session { gap_ms, max_ms } => {
                self.u8(3);
                self.u64(gap_ms);
                self.option(max_ms, Self::u64);
            }
            WindowKind::Count { n, hop } => {
                self.u8(4);
                self.u64(n);
                self.option(hop, Self::u64);
            }
        }
    }

    fn group_by(&mut self, group_by: &GroupBy) {
        let GroupBy { device, metric } = *group_by;
        match device {
            DeviceLevel::Device => self.u8(0),
            DeviceLevel::Level(n) => {
                self.u8(1);
                self.u8(n);
            }
            DeviceLevel::All => self.u8(2),
        }
        self.bool(metric);
    }

    fn filter(&mut self, filter: &SeriesFilter) {
        let SeriesFilter { all, value } = filter;
        self.len(all.len());
        for any in all {
            self.len(any.len());
            for m in any {
                self.matcher(m);
            }
        }
        let ValueRange { min, max } = *value;
        for bound in [min, max] {
            self.option(bound, |h, (v, inclusive)| {
                h.f64(v);
                h.bool(inclusive);
            });
        }
    }

    fn matcher(&mut self, m: &Match) {
        let Match {
            field,
            pattern,
            negate,
        } = m;
        self.u8(match field {
            Field::Device => 0,
            Field::Site => 1,
            Field::Building => 2,
            Field::Line => 3,
            Field::Path => 4,
        });
        self.str(pattern);
        self.bool(*negate);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn views(config: &EngineConfig) -> Vec<ViewSpec> {
        base_views(config).expect("valid")
    }

    #[test]
    fn the_fingerprint_of_a_configuration_is_fixed() {
        // Pinned: the same in every process and build. If this changes,
        // the encoding changed: bump SNAPSHOT_VERSION.
        let config = EngineConfig::default();
        assert_eq!(
            fingerprint(&views(&config), config.max_series),
            0xebfd_786c_425a_dd03
        );
    }

    #[test]
    fn every_field_is_in_the_fingerprint() {
        let mut base = ViewSpec::new("v", WindowKind::Count { n: 5, hop: None });
        base.filter.all = vec![vec![Match {
            field: Field::Site,
            pattern: "s*".into(),
            negate: false,
        }]];
        let print = |v: &ViewSpec| fingerprint(std::slice::from_ref(v), 10);
        let changes: Vec<fn(&mut ViewSpec)> = vec![
            |v| v.name = "w".into(),
            |v| v.window = WindowKind::Count { n: 5, hop: Some(1) },
            |v| v.window = WindowKind::Tumbling { size_ms: 5 },
            |v| v.group_by.device = DeviceLevel::Level(1),
            |v| v.group_by.metric = false,
            |v| v.metric = Some("t".into()),
            |v| v.quantiles = true,
            |v| v.allowed_lateness_ms = 1,
            |v| v.publish = false,
            |v| v.filter.all[0][0].field = Field::Line,
            |v| v.filter.all[0][0].pattern = "s?".into(),
            |v| v.filter.all[0][0].negate = true,
            |v| {
                let m = v.filter.all[0][0].clone();
                v.filter.all[0].push(m);
            },
            |v| v.filter.value.min = Some((0.0, true)),
            |v| v.filter.value.max = Some((0.0, false)),
        ];
        let mut seen = vec![print(&base)];
        for change in changes {
            let mut v = base.clone();
            change(&mut v);
            let p = print(&v);
            assert!(!seen.contains(&p), "{v:?}");
            seen.push(p);
        }
        assert_ne!(
            fingerprint(std::slice::from_ref(&base), 11),
            print(&base),
            "max_series"
        );
        // Strings are length-first: moving a character between two
        // strings changes the print.
        let mut a = base.clone();
        a.name = "ab".into();
        a.metric = Some("c".into());
        let mut b = base.clone();
        b.name = "a".into();
        b.metric = Some("bc".into());
        assert_ne!(print(&a), print(&b));
    }
}
