//! One cache key's state in this process: the current token (read without locks), the
//! single-flight that replaces it, compare-and-invalidate with its back-off after repeated
//! rejections, the outcome of the last attempt, and the renewal in progress.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use tokenwarden_core::{CacheKey, CachedToken, Secret, TokenParams, TokenType};

use super::time::TimeSource;
use crate::Error;

/// A token as the slot holds it, with its ready-made `Authorization` value.
pub(crate) struct Entry {
    pub(crate) cached: CachedToken,
    pub(crate) header: HeaderValue,
    /// Unique within the manager: what a request remembers of the token it sent, so a 401
    /// invalidates exactly that token.
    pub(crate) id: u64,
    /// When the token is due for renewal and when it stops being sent, as deadlines for the
    /// hot path's coarse clock ([`TimeSource::deadline_nanos`]).
    fresh_until: u64,
    usable_until: u64,
    /// The precise form of `usable_until`.
    usable_until_time: SystemTime,
    /// Fetched because the token before it was rejected, and not yet accepted by a resource
    /// server: on probation. Rejected while on probation, it starts a back-off of renewals.
    after_rejection: bool,
    accepted: AtomicBool,
}

/// Whether a cached token may be sent now.
pub(crate) enum Freshness {
    Fresh,
    /// Still usable, but due for renewal.
    Due,
    Unusable,
}

impl Entry {
    /// The entry for `cached`, sent until `usable_until`. Only bearer tokens whose value can go
    /// in a header are accepted, whether they come from a token endpoint or a shared cache.
    pub(crate) fn new(
        cached: CachedToken,
        usable_until: SystemTime,
        id: u64,
        time: &TimeSource,
    ) -> Result<Entry, tokenwarden_oauth::Error> {
        let token = cached.token();
        match token.token_type() {
            TokenType::Bearer => {}
            // Sending a DPoP-bound token without a proof would only earn 401s.
            TokenType::DPoP => {
                return Err(tokenwarden_oauth::Error::InvalidResponse(
                    "the server issued a DPoP-bound token, but this client sends no DPoP proofs"
                        .into(),
                ));
            }
            TokenType::NotApplicable => {
                return Err(tokenwarden_oauth::Error::InvalidResponse(
                    "the server issued a token that is not an access token (token_type N_A); \
                     it cannot be sent in an Authorization header"
                        .into(),
                ));
            }
            other => {
                return Err(tokenwarden_oauth::Error::InvalidResponse(format!(
                    "the token type {:?} is not supported; only Bearer tokens are sent",
                    other.as_str()
                )));
            }
        }
        let value = token.expose_secret();
        let header_safe = !value.is_empty() && value.bytes().all(|b| (0x21..=0x7e).contains(&b));
        let header = header_safe
            .then(|| HeaderValue::try_from(format!("Bearer {value}")).ok())
            .flatten()
            .ok_or_else(|| {
                tokenwarden_oauth::Error::InvalidResponse(
                    "the access token cannot be sent in an Authorization header".into(),
                )
            })?;
        let mut header = header;
        header.set_sensitive(true);
        Ok(Entry {
            fresh_until: time.deadline_nanos(cached.renew_at()),
            usable_until: time.deadline_nanos(usable_until),
            usable_until_time: usable_until,
            cached,
            header,
            id,
            after_rejection: false,
            accepted: AtomicBool::new(false),
        })
    }

    /// The `Authorization` value in bytes of its own (see [`TokenView`]).
    fn header_copy(&self) -> HeaderValue {
        // The bytes are those of a valid value: the fallback (a clone) is never taken.
        let mut copy =
            HeaderValue::from_bytes(self.header.as_bytes()).unwrap_or_else(|_| self.header.clone());
        copy.set_sensitive(true);
        copy
    }

    /// Fetched because its predecessor was rejected, and not accepted since: a response other
    /// than 401 to a request it went with should be reported ([`Slot::accept`]).
    #[inline]
    pub(crate) fn on_probation(&self) -> bool {
        self.after_rejection && !self.accepted.load(Ordering::Relaxed)
    }

    /// Against a coarse reading of the clock, the hot path's check.
    #[inline]
    pub(crate) fn freshness_coarse(&self, now_nanos: u64) -> Freshness {
        if now_nanos < self.fresh_until {
            Freshness::Fresh
        } else if now_nanos < self.usable_until {
            Freshness::Due
        } else {
            Freshness::Unusable
        }
    }

    /// Against a precise reading of the clock.
    pub(crate) fn freshness(&self, now: SystemTime) -> Freshness {
        if self.cached.is_fresh(now) {
            Freshness::Fresh
        } else if now < self.usable_until_time {
            Freshness::Due
        } else {
            Freshness::Unusable
        }
    }
}

/// The outcome of a completed attempt, which every caller that waited for it shares.
struct Outcome {
    /// The slot's generation the attempt completed at.
    generation: u64,
    result: Result<Arc<Entry>, Error>,
}

/// A back-off of renewals after a token fetched because of a rejection was rejected too.
#[derive(Clone, Copy)]
struct Backoff {
    entry: u64,
    until: SystemTime,
}

/// What [`Slot::reject`] did with a token a resource server rejected.
pub(crate) enum Rejection {
    /// It was the current token and is gone now; a renewal may follow.
    Invalidated(Arc<Entry>),
    /// It is no longer the current token: another caller already invalidated or replaced it.
    Replaced,
    /// Renewals are backing off for this key: the token stays, the 401 goes back.
    BackedOff,
}

/// One cache key's state.
pub(crate) struct Slot {
    pub(crate) key: CacheKey,
    /// The parameters the token is requested with (never `force_renewal`).
    pub(crate) params: TokenParams,
    current: ArcSwapOption<Entry>,
    flight: tokio::sync::Mutex<()>,
    /// Bumped by every completed attempt and every invalidation, so a caller that waited for the
    /// flight can tell whether an attempt completed meanwhile.
    generation: AtomicU64,
    last: ArcSwapOption<Outcome>,
    renewing: AtomicBool,
    /// After a failed background renewal, none starts before this moment (ms since the epoch).
    renew_not_before_ms: AtomicU64,
    /// The last token a resource server rejected: never taken back from a shared cache.
    rejected: ArcSwapOption<Secret>,
    /// Set by an invalidation after a rejection: the next token is fetched because of one.
    renewing_after_rejection: AtomicBool,
    backoff: Mutex<Option<Backoff>>,
}

impl Slot {
    pub(crate) fn new(key: CacheKey, params: TokenParams) -> Slot {
        Slot {
            key,
            params: params.without_force_renewal(),
            current: ArcSwapOption::empty(),
            flight: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
            last: ArcSwapOption::empty(),
            renewing: AtomicBool::new(false),
            renew_not_before_ms: AtomicU64::new(0),
            rejected: ArcSwapOption::empty(),
            renewing_after_rejection: AtomicBool::new(false),
            backoff: Mutex::new(None),
        }
    }

    /// The current token, read without locks or writes to shared memory.
    #[inline]
    pub(crate) fn load(&self) -> arc_swap::Guard<Option<Arc<Entry>>> {
        self.current.load()
    }

    /// A view of the current token for a reader that reads it often.
    pub(crate) fn view(self: &Arc<Self>) -> TokenView {
        TokenView {
            current: arc_swap::Cache::new(CurrentToken(self.clone())),
            header: None,
        }
    }

    pub(crate) fn current_full(&self) -> Option<Arc<Entry>> {
        self.current.load_full()
    }

    /// The last token rejected by a resource server, if any.
    pub(crate) fn rejected(&self) -> Option<Arc<Secret>> {
        self.rejected.load_full()
    }

    /// Single-flight: a token from `fetch` unless the current one will do, with one `fetch`
    /// running at a time. A caller that waited while an attempt completed takes that attempt's
    /// outcome, token or error, whatever the token's freshness: the token it waited for answers
    /// it, even one that arrived already due for renewal (`expires_in: 0`, a slow server).
    ///
    /// `fetch` gets the token that was current when this caller came (a forced renewal must not
    /// take it back from a shared cache). The caller bounds the wait: dropping this future
    /// leaves the slot as it was.
    pub(crate) async fn get_or_fetch<F, Fut>(
        &self,
        force: bool,
        time: &TimeSource,
        fetch: F,
    ) -> Result<Arc<Entry>, Error>
    where
        F: FnOnce(Option<Arc<Entry>>) -> Fut,
        Fut: Future<Output = Result<Entry, Error>>,
    {
        let previous = self.current.load_full();
        let seen = self.generation.load(Ordering::Acquire);
        let _flight = self.flight.lock().await;
        let generation = self.generation.load(Ordering::Acquire);
        if generation != seen
            && let Some(outcome) = self.last.load_full()
            && outcome.generation == generation
        {
            return outcome.result.clone();
        }
        if !force
            && let Some(entry) = self.current.load_full()
            && matches!(entry.freshness(time.now()), Freshness::Fresh)
        {
            return Ok(entry);
        }
        let result = match fetch(previous).await {
            Ok(mut entry) => {
                entry.after_rejection = self.renewing_after_rejection.swap(false, Ordering::AcqRel);
                let entry = Arc::new(entry);
                self.current.store(Some(entry.clone()));
                Ok(entry)
            }
            Err(error) => Err(error),
        };
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.last.store(Some(Arc::new(Outcome {
            generation,
            result: result.clone(),
        })));
        result
    }

    /// Compare-and-invalidate after a resource server rejected the token `id`: it is dropped only
    /// if it is still the current token, so a burst of rejections of one token drops it once.
    ///
    /// A token that was itself fetched because of a rejection, and that no resource server has
    /// accepted since, is not dropped at once when it is rejected as well: renewals back off for
    /// `backoff` (an API that rejects every token would otherwise cost one token request per
    /// request), and the token is still sent, so requests succeed again as soon as the API
    /// accepts it. Once the back-off has passed, the next rejection drops it.
    pub(crate) fn reject(&self, id: u64, now: SystemTime, backoff: Duration) -> Rejection {
        let current = self.current.load();
        let Some(entry) = current.as_ref().filter(|e| e.id == id).cloned() else {
            return Rejection::Replaced;
        };
        {
            let mut state = self.backoff.lock().unwrap_or_else(PoisonError::into_inner);
            match *state {
                // Backing off: the token stays and the 401 goes back.
                Some(Backoff {
                    entry: backed_off,
                    until,
                }) if backed_off == id && now < until => {
                    return Rejection::BackedOff;
                }
                // The back-off has passed: this rejection drops the token.
                Some(Backoff {
                    entry: backed_off, ..
                }) if backed_off == id => {}
                _ if entry.on_probation() => {
                    *state = Some(Backoff {
                        entry: id,
                        until: now.checked_add(backoff).unwrap_or(now),
                    });
                    tracing::warn!(
                        key = %self.key,
                        ?backoff,
                        "a token fetched after a rejection was rejected too; renewals back off and 401s go back to callers"
                    );
                    return Rejection::BackedOff;
                }
                _ => {}
            }
        }
        let previous = self.current.compare_and_swap(&*current, None);
        if !previous.as_ref().is_some_and(|p| Arc::ptr_eq(p, &entry)) {
            return Rejection::Replaced;
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.rejected
            .store(Some(Arc::new(entry.cached.token().secret().clone())));
        self.renewing_after_rejection.store(true, Ordering::Release);
        Rejection::Invalidated(entry)
    }

    /// A resource server accepted token `id`: if it was on probation, it is no longer, so a
    /// later rejection is a rejection like any other.
    pub(crate) fn accept(&self, id: u64) {
        if let Some(entry) = self.current.load().as_ref().filter(|e| e.id == id) {
            entry.accepted.store(true, Ordering::Relaxed);
        }
    }

    /// Drops the current token if `matches` says it is the one to drop (compare-and-invalidate
    /// from outside the layer); returns it if it did.
    pub(crate) fn invalidate_if(&self, matches: impl Fn(&Entry) -> bool) -> Option<Arc<Entry>> {
        let current = self.current.load();
        let entry = current.as_ref().filter(|e| matches(e)).cloned()?;
        let previous = self.current.compare_and_swap(&*current, None);
        if !previous.as_ref().is_some_and(|p| Arc::ptr_eq(p, &entry)) {
            return None;
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.rejected
            .store(Some(Arc::new(entry.cached.token().secret().clone())));
        Some(entry)
    }

    /// Forgets the current token (not the shared cache's copy).
    pub(crate) fn clear(&self) {
        self.current.store(None);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Claims the one background renewal of this slot, unless one runs or a failed one asked
    /// to wait. The claim ends when the guard is dropped: when the renewal finishes, and also
    /// when its task is dropped without ever running (its runtime shut down).
    pub(crate) fn start_renewal(self: &Arc<Self>, now: SystemTime) -> Option<RenewalGuard> {
        if unix_ms(now) < self.renew_not_before_ms.load(Ordering::Relaxed) {
            return None;
        }
        if self.renewing.swap(true, Ordering::AcqRel) {
            return None;
        }
        Some(RenewalGuard(self.clone()))
    }

    /// Whether a background renewal is running (or claimed).
    #[cfg(test)]
    pub(crate) fn is_renewing(&self) -> bool {
        self.renewing.load(Ordering::Acquire)
    }

    /// Whether the slot holds nothing usable at `now`: an eviction candidate.
    pub(crate) fn is_idle(&self, now: SystemTime) -> bool {
        self.current
            .load()
            .as_ref()
            .is_none_or(|e| matches!(e.freshness(now), Freshness::Unusable))
    }
}

/// A slot's current token, as a [`TokenView`] reads it.
#[derive(Clone)]
pub(crate) struct CurrentToken(Arc<Slot>);

impl std::ops::Deref for CurrentToken {
    type Target = ArcSwapOption<Entry>;

    fn deref(&self) -> &Self::Target {
        &self.0.current
    }
}

/// One reader's view of a slot's current token, for a reader with `&mut` access (a service
/// clone's `call`):
/// - arc-swap's `Cache` keeps a reference to the token it last read and reads the slot again
///   only when the slot's pointer changed, so a request checks one pointer;
/// - the view keeps its own copy of the token's `Authorization` value, so the reference count
///   a request's clone of it writes is this reader's, not one that every core writes.
pub(crate) struct TokenView {
    current: arc_swap::Cache<CurrentToken, Option<Arc<Entry>>>,
    /// The id of the entry the header was copied from, and the copy.
    header: Option<(u64, HeaderValue)>,
}

impl TokenView {
    /// The slot's current token, if any, and its `Authorization` value to send.
    #[inline]
    pub(crate) fn load(&mut self) -> Option<(&Entry, HeaderValue)> {
        let entry = self.current.load().as_deref()?;
        let header = match &self.header {
            Some((id, header)) if *id == entry.id => header.clone(),
            _ => {
                let copy = entry.header_copy();
                self.header = Some((entry.id, copy.clone()));
                copy
            }
        };
        Some((entry, header))
    }
}

/// The claim of a slot's background renewal; see [`Slot::start_renewal`].
pub(crate) struct RenewalGuard(Arc<Slot>);

impl RenewalGuard {
    pub(crate) fn slot(&self) -> &Arc<Slot> {
        &self.0
    }

    /// After a failed renewal: the still-usable token is used this long before the next try.
    pub(crate) fn retry_after(&self, now: SystemTime, wait: Duration) {
        let at = unix_ms(now).saturating_add(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
        self.0.renew_not_before_ms.store(at, Ordering::Relaxed);
    }
}

impl Drop for RenewalGuard {
    fn drop(&mut self) {
        self.0.renewing.store(false, Ordering::Release);
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokenwarden_core::{AccessToken, ManualClock};

    fn entry(id: u64, time: &TimeSource, lifetime: Duration) -> Entry {
        let now = time.now();
        let token = AccessToken::new(format!("t{id}"), TokenType::Bearer).unwrap();
        let cached = CachedToken::new(token, now + lifetime, now + lifetime / 2);
        Entry::new(cached, now + lifetime, id, time).unwrap()
    }

    fn clock() -> (ManualClock, TimeSource) {
        let clock = ManualClock::starting_now();
        (clock.clone(), TimeSource::Custom(Arc::new(clock)))
    }

    #[tokio::test]
    async fn a_view_sends_its_own_copy_of_the_current_token() {
        let (_clock, time) = clock();
        let slot = Arc::new(Slot::new(
            CacheKey::builder("c").build(),
            TokenParams::new(),
        ));
        let mut view = slot.view();
        assert!(view.load().is_none());

        let first = slot
            .get_or_fetch(false, &time, |_| async {
                Ok(entry(1, &time, Duration::from_secs(60)))
            })
            .await
            .unwrap();
        let (seen, header) = view.load().unwrap();
        assert_eq!(seen.id, 1);
        assert_eq!(header, "Bearer t1");
        assert!(header.is_sensitive());
        // Bytes of its own: cloning it writes no count that the slot's other readers share.
        assert_ne!(header.as_bytes().as_ptr(), first.header.as_bytes().as_ptr());

        // A new token replaces the copy; a cleared slot sends nothing.
        slot.get_or_fetch(true, &time, |_| async {
            Ok(entry(2, &time, Duration::from_secs(60)))
        })
        .await
        .unwrap();
        let (seen, header) = view.load().unwrap();
        assert_eq!(
            (seen.id, header),
            (2, HeaderValue::from_static("Bearer t2"))
        );
        slot.clear();
        assert!(view.load().is_none());
    }

    #[tokio::test]
    async fn waiters_take_the_leaders_token_even_one_already_due() {
        let (_clock, time) = clock();
        let slot = Arc::new(Slot::new(
            CacheKey::builder("c").build(),
            TokenParams::new(),
        ));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let calls = (0..100).map(|_| {
            let (slot, time, fetches, mut released) = (
                slot.clone(),
                time.clone(),
                fetches.clone(),
                released.clone(),
            );
            async move {
                slot.get_or_fetch(false, &time, |_| async {
                    let n = fetches.fetch_add(1, Ordering::SeqCst) as u64;
                    let _ = released.wait_for(|r| *r).await;
                    // A zero lifetime: due, and unusable, the moment it arrives.
                    Ok(entry(n, &time, Duration::ZERO))
                })
                .await
                .map(|e| e.id)
            }
        });
        let all = futures_join(calls.collect(), async move {
            tokio::task::yield_now().await;
            let _ = release.send(true);
        })
        .await;
        assert!(all.iter().all(|r| matches!(r, Ok(0))), "one token for all");
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
    }

    /// Polls the calls and `side` together on this task.
    async fn futures_join<F: Future>(
        calls: Vec<F>,
        side: impl Future<Output = ()>,
    ) -> Vec<F::Output> {
        let (results, ()) = tokio::join!(
            async {
                let mut out = Vec::new();
                let mut pending: Vec<_> = calls.into_iter().map(Box::pin).collect();
                // Start every call before any finishes, so all of them wait on one flight.
                let mut handles = Vec::new();
                for call in pending.drain(..) {
                    handles.push(call);
                }
                for result in join_all(handles).await {
                    out.push(result);
                }
                out
            },
            side
        );
        results
    }

    async fn join_all<F: Future + Unpin>(futures: Vec<F>) -> Vec<F::Output> {
        let mut slots: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
        let mut futures: Vec<Option<F>> = futures.into_iter().map(Some).collect();
        std::future::poll_fn(|cx| {
            let mut done = true;
            for (future, slot) in futures.iter_mut().zip(slots.iter_mut()) {
                if let Some(f) = future {
                    match std::pin::Pin::new(f).poll(cx) {
                        std::task::Poll::Ready(v) => {
                            *slot = Some(v);
                            *future = None;
                        }
                        std::task::Poll::Pending => done = false,
                    }
                }
            }
            if done {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
        slots.into_iter().flatten().collect()
    }

    #[tokio::test]
    async fn a_rejected_token_is_dropped_once_and_a_second_rejection_backs_off() {
        let (clock, time) = clock();
        let slot = Slot::new(CacheKey::builder("c").build(), TokenParams::new());
        let backoff = Duration::from_secs(5);
        let first = slot
            .get_or_fetch(false, &time, |_| async {
                Ok(entry(1, &time, Duration::from_secs(60)))
            })
            .await
            .unwrap();
        assert!(matches!(
            slot.reject(first.id, time.now(), backoff),
            Rejection::Invalidated(_)
        ));
        assert!(matches!(
            slot.reject(first.id, time.now(), backoff),
            Rejection::Replaced
        ));
        let second = slot
            .get_or_fetch(false, &time, |_| async {
                Ok(entry(2, &time, Duration::from_secs(60)))
            })
            .await
            .unwrap();
        assert!(second.after_rejection);
        // The token fetched after a rejection is rejected too: back off, keep it.
        assert!(matches!(
            slot.reject(2, time.now(), backoff),
            Rejection::BackedOff
        ));
        assert!(matches!(
            slot.reject(2, time.now(), backoff),
            Rejection::BackedOff
        ));
        assert_eq!(slot.current_full().map(|e| e.id), Some(2));
        // Once the back-off has passed, a rejection drops it.
        clock.advance(backoff);
        assert!(matches!(
            slot.reject(2, time.now(), backoff),
            Rejection::Invalidated(_)
        ));

        // A token fetched after a rejection that an API then accepts is no longer on probation:
        // its later rejection (a second revocation) is handled at once.
        let third = slot
            .get_or_fetch(false, &time, |_| async {
                Ok(entry(3, &time, Duration::from_secs(60)))
            })
            .await
            .unwrap();
        assert!(third.on_probation());
        slot.accept(3);
        assert!(!third.on_probation());
        assert!(matches!(
            slot.reject(3, time.now(), backoff),
            Rejection::Invalidated(_)
        ));
    }

    #[test]
    fn the_renewal_claim_ends_when_its_task_is_dropped_unpolled() {
        let slot = Arc::new(Slot::new(
            CacheKey::builder("c").build(),
            TokenParams::new(),
        ));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let guard = slot.start_renewal(SystemTime::now()).unwrap();
        assert!(
            slot.start_renewal(SystemTime::now()).is_none(),
            "one at a time"
        );
        runtime.spawn(async move {
            let _guard = guard;
        });
        assert!(slot.is_renewing());
        // The runtime shuts down before it ever polls the task.
        drop(runtime);
        assert!(!slot.is_renewing());
        assert!(slot.start_renewal(SystemTime::now()).is_some());
    }

    #[test]
    fn only_bearer_tokens_with_header_safe_values_make_entries() {
        let (_clock, time) = clock();
        let now = time.now();
        let make = |token: AccessToken| {
            let cached = CachedToken::new(token, now + Duration::from_secs(60), now);
            Entry::new(cached, now + Duration::from_secs(60), 1, &time)
        };
        assert!(make(AccessToken::new("ok", TokenType::Bearer).unwrap()).is_ok());
        assert!(make(AccessToken::new("x", TokenType::DPoP).unwrap()).is_err());
        // A planted type that would smuggle a second credential into the header.
        let planted = AccessToken::new("Zm9v", TokenType::parse("Bearer x, Basic")).unwrap();
        assert!(make(planted).is_err());
    }
}
