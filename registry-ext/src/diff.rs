//! What changed between two snapshots of a service.

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use crate::Instance;

/// Instances added, changed (same address, other weight or tags) and removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    /// Addresses new in the later snapshot.
    pub added: Vec<Arc<Instance>>,
    /// Addresses in both whose weight or tags changed (later value).
    pub updated: Vec<Arc<Instance>>,
    /// Addresses gone from the later snapshot.
    pub removed: Vec<Arc<Instance>>,
}

impl Diff {
    /// Compares two instance lists by address.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use rpc_ext_registry::{Diff, Instance};
    ///
    /// let a = Arc::new(Instance::new("echo", "10.0.0.1:80".parse().unwrap()));
    /// let b = Arc::new(Instance::new("echo", "10.0.0.2:80".parse().unwrap()));
    /// let heavier_a = Arc::new(a.as_ref().clone().with_weight(50));
    ///
    /// let diff = Diff::between(&[a.clone()], &[heavier_a.clone(), b.clone()]);
    /// assert_eq!(diff.added, vec![b]);
    /// assert_eq!(diff.updated, vec![heavier_a]);
    /// assert!(diff.removed.is_empty());
    /// ```
    #[must_use]
    pub fn between(prev: &[Arc<Instance>], next: &[Arc<Instance>]) -> Self {
        let before: HashMap<SocketAddr, &Arc<Instance>> =
            prev.iter().map(|i| (i.address, i)).collect();
        let after: HashMap<SocketAddr, &Arc<Instance>> =
            next.iter().map(|i| (i.address, i)).collect();
        let mut diff = Diff::default();
        for instance in next {
            match before.get(&instance.address) {
                None => diff.added.push(instance.clone()),
                Some(old) if old != &instance => diff.updated.push(instance.clone()),
                Some(_) => {}
            }
        }
        for instance in prev {
            if !after.contains_key(&instance.address) {
                diff.removed.push(instance.clone());
            }
        }
        diff
    }

    /// True when nothing changed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.updated.is_empty() && self.removed.is_empty()
    }
}
