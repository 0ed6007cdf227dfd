//! Sending rate limits: token buckets, one global and one per recipient domain (Japanese mobile
//! carriers and large mailbox providers throttle senders that go too fast).
//!
//! [`TokenBucket`] is pure: every call takes `now`. [`RateLimiter`] reads a
//! [`kizuna_core::clock::Clock`], so tests and the outbox drive it with a manual clock. Nothing
//! sleeps here: [`RateLimiter::try_acquire`] says "go" or "retry after this long", and the
//! caller (the outbox) schedules the message accordingly.

use chrono::{DateTime, Duration, Utc};
use kizuna_core::clock::SharedClock;
use std::collections::HashMap;
use std::sync::Mutex;

/// A token bucket: `burst` tokens at most, refilled at `per_second`.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    updated: DateTime<Utc>,
}

impl TokenBucket {
    /// A full bucket. `per_second` must be positive; `burst` is at least 1.
    pub fn new(per_second: f64, burst: u32, now: DateTime<Utc>) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            per_second: if per_second.is_finite() && per_second > 0.0 {
                per_second
            } else {
                f64::MIN_POSITIVE
            },
            burst,
            tokens: burst,
            updated: now,
        }
    }

    fn refill(&mut self, now: DateTime<Utc>) {
        if now > self.updated {
            let secs = (now - self.updated).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6;
            self.tokens = (self.tokens + secs * self.per_second).min(self.burst);
            self.updated = now;
        }
    }

    /// How long until one token is available (zero when one is).
    pub fn wait_time(&mut self, now: DateTime<Utc>) -> Duration {
        self.refill(now);
        if self.tokens >= 1.0 {
            Duration::zero()
        } else {
            let secs = (1.0 - self.tokens) / self.per_second;
            Duration::microseconds((secs * 1e6).ceil().min(i64::MAX as f64) as i64)
        }
    }

    /// Takes one token, or says how long to wait for it.
    pub fn try_take(&mut self, now: DateTime<Utc>) -> Result<(), Duration> {
        let wait = self.wait_time(now);
        if wait.is_zero() {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(wait)
        }
    }

    /// Whether the bucket is full (it can be forgotten without changing behaviour).
    pub fn is_full(&mut self, now: DateTime<Utc>) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

/// A rate: `per_second` with bursts of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Sustained messages per second.
    pub per_second: f64,
    /// Burst size.
    pub burst: u32,
}

/// Limits for [`RateLimiter`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RateLimits {
    /// All messages together; `None` is unlimited.
    pub global: Option<Rate>,
    /// Each recipient domain without its own entry; `None` is unlimited.
    pub per_domain_default: Option<Rate>,
    /// Per-domain overrides, e.g. `docomo.ne.jp`.
    pub per_domain: HashMap<String, Rate>,
}

#[derive(Debug)]
struct State {
    global: Option<TokenBucket>,
    domains: HashMap<String, TokenBucket>,
    takes: u64,
}

/// Global and per-recipient-domain limits, driven by a clock. Thread-safe.
#[derive(Debug)]
pub struct RateLimiter {
    limits: RateLimits,
    clock: SharedClock,
    state: Mutex<State>,
}

impl RateLimiter {
    /// A limiter with full buckets.
    pub fn new(limits: RateLimits, clock: SharedClock) -> Self {
        let now = clock.now();
        let global = limits
            .global
            .map(|r| TokenBucket::new(r.per_second, r.burst, now));
        let per_domain = limits
            .per_domain
            .iter()
            .map(|(d, r)| (d.to_ascii_lowercase(), *r))
            .collect();
        Self {
            limits: RateLimits {
                per_domain,
                ..limits
            },
            clock,
            state: Mutex::new(State {
                global,
                domains: HashMap::new(),
                takes: 0,
            }),
        }
    }

    fn domain_rate(&self, domain: &str) -> Option<Rate> {
        self.limits
            .per_domain
            .get(domain)
            .copied()
            .or(self.limits.per_domain_default)
    }

    /// Takes a token for one message to `recipient` (an address or a bare domain) from both
    /// the global and the domain bucket — from neither if either is empty — or returns how long
    /// to wait.
    pub fn try_acquire(&self, recipient: &str) -> Result<(), Duration> {
        let domain = recipient
            .rsplit('@')
            .next()
            .unwrap_or(recipient)
            .trim()
            .to_ascii_lowercase();
        let now = self.clock.now();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let rate = self.domain_rate(&domain);
        let mut wait = Duration::zero();
        if let Some(g) = st.global.as_mut() {
            wait = wait.max(g.wait_time(now));
        }
        if let Some(r) = rate {
            let b = st
                .domains
                .entry(domain.clone())
                .or_insert_with(|| TokenBucket::new(r.per_second, r.burst, now));
            wait = wait.max(b.wait_time(now));
        }
        if !wait.is_zero() {
            return Err(wait);
        }
        if let Some(g) = st.global.as_mut() {
            let _ = g.try_take(now);
        }
        if rate.is_some()
            && let Some(b) = st.domains.get_mut(&domain)
        {
            let _ = b.try_take(now);
        }
        st.takes += 1;
        if st.takes.is_multiple_of(4096) {
            // Forget full buckets so that the map stays as small as the set of busy domains.
            st.domains.retain(|_, b| !b.is_full(now));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use kizuna_core::clock::ManualClock;
    use std::sync::Arc;

    fn start() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 2, 9, 0, 0).unwrap()
    }

    #[test]
    fn bucket_bursts_then_refills() {
        let mut b = TokenBucket::new(2.0, 3, start());
        for _ in 0..3 {
            assert!(b.try_take(start()).is_ok());
        }
        let wait = b.try_take(start()).unwrap_err();
        assert_eq!(wait, Duration::milliseconds(500));
        assert!(b.try_take(start() + Duration::milliseconds(499)).is_err());
        assert!(b.try_take(start() + Duration::milliseconds(500)).is_ok());
        // Never more than the burst, however long it rests.
        let later = start() + Duration::hours(1);
        for _ in 0..3 {
            assert!(b.try_take(later).is_ok());
        }
        assert!(b.try_take(later).is_err());
        // Time going backwards does not add tokens.
        assert!(b.try_take(start()).is_err());
    }

    #[test]
    fn global_and_domain_limits() {
        let clock = ManualClock::new(start());
        let mut per_domain = HashMap::new();
        per_domain.insert(
            "Docomo.ne.jp".to_string(),
            Rate {
                per_second: 1.0,
                burst: 1,
            },
        );
        let limiter = RateLimiter::new(
            RateLimits {
                global: Some(Rate {
                    per_second: 10.0,
                    burst: 5,
                }),
                per_domain_default: Some(Rate {
                    per_second: 100.0,
                    burst: 100,
                }),
                per_domain,
            },
            Arc::new(clock.clone()),
        );
        assert!(limiter.try_acquire("a@docomo.ne.jp").is_ok());
        assert_eq!(
            limiter.try_acquire("b@DOCOMO.ne.jp").unwrap_err(),
            Duration::seconds(1)
        );
        // Other domains still go, until the global bucket is empty.
        for _ in 0..4 {
            assert!(limiter.try_acquire("x@example.jp").is_ok());
        }
        let wait = limiter.try_acquire("x@example.jp").unwrap_err();
        assert_eq!(wait, Duration::milliseconds(100));
        // A refused acquisition took nothing: after 100 ms exactly one more goes.
        clock.advance(Duration::milliseconds(100));
        assert!(limiter.try_acquire("x@example.jp").is_ok());
        assert!(limiter.try_acquire("x@example.jp").is_err());
        clock.advance(Duration::seconds(1));
        assert!(limiter.try_acquire("c@docomo.ne.jp").is_ok());
    }

    #[test]
    fn unlimited_when_unset() {
        let limiter = RateLimiter::new(RateLimits::default(), Arc::new(ManualClock::new(start())));
        for _ in 0..10_000 {
            assert!(limiter.try_acquire("a@example.jp").is_ok());
        }
    }
}
