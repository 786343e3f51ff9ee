//! Views over the same windows share one group state.

use super::ViewSpec;

/// Views with the same window, grouping, metric, series filter and
/// lateness hold the same windows over the same samples, so they share
/// one state: the first such view (the owner) keeps the groups, and its
/// closed windows go out once per view. A sample then updates each
/// distinct window once, however many views and rules read it (the
/// default view and a p99 view over the same windows; rules on the same
/// window).
#[derive(Debug, Clone, Default)]
pub(super) struct Sharing {
    /// The view whose state each view reads (itself for an owner).
    pub(super) owner: Vec<usize>,
    /// Per owner, the other views reading its state.
    pub(super) followers: Vec<Vec<usize>>,
    /// Per owner, whether any of its views wants quantiles.
    pub(super) quantiles: Vec<bool>,
}

/// Whether two views hold the same windows over the same samples.
pub(super) fn same_state(a: &ViewSpec, b: &ViewSpec) -> bool {
    a.window == b.window
        && a.group_by == b.group_by
        && a.metric == b.metric
        && a.filter == b.filter
        && a.allowed_lateness_ms == b.allowed_lateness_ms
}

impl Sharing {
    /// Who owns what among `views`: each view's owner is the first view
    /// with the same state.
    pub(super) fn of(views: &[ViewSpec]) -> Self {
        let mut sharing = Sharing {
            owner: Vec::with_capacity(views.len()),
            followers: vec![Vec::new(); views.len()],
            quantiles: vec![false; views.len()],
        };
        for (v, spec) in views.iter().enumerate() {
            let owner = (0..v)
                .find(|&u| sharing.owner[u] == u && same_state(&views[u], spec))
                .unwrap_or(v);
            sharing.owner.push(owner);
            sharing.quantiles[owner] |= spec.quantiles;
            if owner != v {
                sharing.followers[owner].push(v);
            }
        }
        sharing
    }

    /// Whether view `v` keeps its own groups.
    #[inline]
    pub(super) fn owns(&self, v: usize) -> bool {
        self.owner[v] == v
    }
}
