//! Every live layer's configuration, by id.
//!
//! A request sent with a cached token keeps only its layer's id: it needs the configuration
//! (the manager, the client) only if a 401 comes back. Holding an `Arc` instead would write its
//! reference count twice per request, and that count is shared by every request of the layer on
//! every core. The lookup happens on the rare 401 path.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError, Weak};

use super::service::Shared;

static LAYERS: LazyLock<Mutex<HashMap<u64, Weak<Shared>>>> = LazyLock::new(Default::default);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn layers() -> MutexGuard<'static, HashMap<u64, Weak<Shared>>> {
    LAYERS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Creates a layer's configuration under a new id; it is forgotten when dropped.
pub(crate) fn register(make: impl FnOnce(u64) -> Shared) -> Arc<Shared> {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let shared = Arc::new(make(id));
    layers().insert(id, Arc::downgrade(&shared));
    shared
}

/// The configuration of layer `id`, unless every layer and service built from it is gone.
#[cold]
pub(crate) fn find(id: u64) -> Option<Arc<Shared>> {
    layers().get(&id)?.upgrade()
}

/// Called when a configuration is dropped.
pub(crate) fn forget(id: u64) {
    layers().remove(&id);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_forgotten() {
        let a = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let b = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        assert_ne!(a, b);
        assert!(find(a).is_none(), "an id never registered is not found");
        forget(a);
    }
}
