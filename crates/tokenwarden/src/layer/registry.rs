//! Every live layer's configuration, and a clone of every layered service's inner service, by id.
//!
//! A request sent with a cached token keeps only ids: it needs the configuration (the manager,
//! the client) and a service to replay with only if a 401 comes back. Holding an `Arc` instead
//! would write its reference count twice per request, and that count is shared by every request
//! of the layer on every core; holding a clone of the inner service would cost a clone per
//! request (a hyper-util `Client` clone writes about five such counts). The lookups happen on the
//! rare 401 path.

use std::any::Any;
use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError, Weak};

use super::service::Shared;

static LAYERS: LazyLock<Mutex<HashMap<u64, Weak<Shared>>>> = LazyLock::new(Default::default);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

type AnySource = dyn Any + Send + Sync;

static SERVICES: LazyLock<Mutex<HashMap<u64, Weak<AnySource>>>> = LazyLock::new(Default::default);

fn services() -> MutexGuard<'static, HashMap<u64, Weak<AnySource>>> {
    SERVICES.lock().unwrap_or_else(PoisonError::into_inner)
}

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

/// A clone of a layered service's inner service, shared by the service and its clones, to replay
/// requests with after a 401. Registered under its id until the last of them is dropped.
pub(crate) struct ReplaySource<S> {
    id: NonZeroU64,
    service: Mutex<S>,
}

impl<S> ReplaySource<S> {
    pub(crate) fn id(&self) -> NonZeroU64 {
        self.id
    }

    /// A fresh clone of the kept service.
    pub(crate) fn service(&self) -> S
    where
        S: Clone,
    {
        self.service
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl<S> Drop for ReplaySource<S> {
    fn drop(&mut self) {
        services().remove(&self.id.get());
    }
}

/// Keeps `service` to replay with, under a new id.
pub(crate) fn register_service<S: Send + 'static>(service: S) -> Arc<ReplaySource<S>> {
    // Ids count up from 1 and would take centuries to wrap.
    let id = NonZeroU64::new(NEXT_ID.fetch_add(1, Ordering::Relaxed)).unwrap_or(NonZeroU64::MAX);
    let source = Arc::new(ReplaySource {
        id,
        service: Mutex::new(service),
    });
    let weak: Weak<AnySource> = Arc::downgrade(&source) as Weak<AnySource>;
    services().insert(id.get(), weak);
    source
}

/// A fresh clone of the service kept under `id`, unless the service and all its clones are gone.
#[cold]
pub(crate) fn replay_service<S: Clone + Send + 'static>(id: NonZeroU64) -> Option<S> {
    let source = services().get(&id.get())?.upgrade()?;
    let source = source.downcast::<ReplaySource<S>>().ok()?;
    Some(source.service())
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

    #[test]
    fn a_replay_source_is_found_while_it_lives_and_only_as_its_own_type() {
        let source = register_service(String::from("inner"));
        let id = source.id();
        assert_eq!(replay_service::<String>(id).as_deref(), Some("inner"));
        assert_eq!(
            replay_service::<Vec<u8>>(id),
            None,
            "another type is never returned"
        );
        drop(source);
        assert_eq!(replay_service::<String>(id), None);
        assert!(!services().contains_key(&id.get()), "and its entry is gone");
    }
}
