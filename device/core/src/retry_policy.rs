//! How the worker waits out a deferred TX frame: when it retries, and whether it ever
//! gives up. One enum, parsed from `--retry-policy` by every front end.
//!
//! Whatever the policy, a deferred frame's episode means the same (see `crate::episode`):
//! its first failed send is `enobufs_begin`, every later failed send `enobufs_retry`, and
//! it ends either with `enobufs_resolved` (the frame went out) or, under `bounded:N` only,
//! with a `frame_drop` row of reason [`crate::probes::DropReason::RetryExhausted`] and no
//! resolved row. So `analyze` reads the traces of every policy with the same rules.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The base retry delay of the policies that always run a timer, when the retry-timer
/// setting has none (Linux datagrams rely on write events): libkrun PR 556's 50 µs.
pub const BASE_DELAY: Duration = Duration::from_micros(50);

/// `backoff` with no cap given: 50 µs doubled five times.
pub const DEFAULT_BACKOFF_CAP: Duration = Duration::from_micros(1600);

/// `room`'s safety-net timer: long enough not to poll, short enough that a write event
/// the kernel never sends (macOS after ENOBUFS) costs a millisecond, not a hang.
pub const ROOM_SAFETY_NET: Duration = Duration::from_millis(1);

/// When a deferred frame is retried, and when it is dropped instead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RetryPolicy {
    /// libkrun PR 556: retry on write events, kicks and the retry timer
    /// ([`crate::retry_timer::RetryTimer`]) until the frame goes; never drop.
    #[default]
    Timer,
    /// Like `Timer` (with [`BASE_DELAY`] when the retry timer is off), but a frame whose
    /// send failed `retries + 1` times (the first send and `retries` retries) is dropped:
    /// vmnet-helper's 10 x 50 µs.
    Bounded { retries: u32 },
    /// Retry timer doubling from the base delay after every failed send, up to `cap`.
    Backoff { cap: Duration },
    /// Retry only when a write event reports free send space that fits the frame (macOS:
    /// EVFILT_WRITE with NOTE_LOWAT set to the frame size), with [`ROOM_SAFETY_NET`] as the
    /// only timer; guest kicks do not retry.
    Room,
    /// `Timer`, and while a frame is deferred, frames of *other* flows (`crate::flow`)
    /// behind it that the socket takes go ahead of it; within one flow, and for any frame
    /// whose flow is unknown, the order never changes. Only on backends whose sends are
    /// all-or-nothing (datagrams: [`crate::backend::Backend::whole_frames`]); elsewhere
    /// it is `Timer`.
    SmallFirst,
}

/// A `--retry-policy` value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?}: {why} (expected timer, bounded:N, backoff[:CAP_US], room or small-first)")]
pub struct RetryPolicyError {
    value: String,
    why: &'static str,
}

impl FromStr for RetryPolicy {
    type Err = RetryPolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| RetryPolicyError {
            value: s.to_string(),
            why,
        };
        let (name, arg) = match s.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (s, None),
        };
        match (name, arg) {
            ("timer", None) => Ok(RetryPolicy::Timer),
            ("room", None) => Ok(RetryPolicy::Room),
            ("small-first", None) => Ok(RetryPolicy::SmallFirst),
            ("bounded", Some(n)) => n
                .parse::<u32>()
                .map(|retries| RetryPolicy::Bounded { retries })
                .map_err(|_| err("N must be a whole number of retries, 0 to 4294967295")),
            ("bounded", None) => Err(err("bounded needs a retry count, e.g. bounded:10")),
            ("backoff", None) => Ok(RetryPolicy::Backoff {
                cap: DEFAULT_BACKOFF_CAP,
            }),
            ("backoff", Some(us)) => match us.parse::<u64>() {
                Ok(us) if us >= BASE_DELAY.as_micros() as u64 && us <= 10_000_000 => {
                    Ok(RetryPolicy::Backoff {
                        cap: Duration::from_micros(us),
                    })
                }
                _ => Err(err("CAP_US must be microseconds from 50 to 10000000")),
            },
            ("timer" | "room" | "small-first", Some(_)) => {
                Err(err("this policy takes no argument"))
            }
            _ => Err(err("unknown policy")),
        }
    }
}

impl fmt::Display for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryPolicy::Timer => write!(f, "timer"),
            RetryPolicy::Bounded { retries } => write!(f, "bounded:{retries}"),
            RetryPolicy::Backoff { cap } => write!(f, "backoff:{}", cap.as_micros()),
            RetryPolicy::Room => write!(f, "room"),
            RetryPolicy::SmallFirst => write!(f, "small-first"),
        }
    }
}

impl RetryPolicy {
    /// Failed sends after which the deferred frame is dropped (`None`: never).
    pub fn max_failed_sends(self) -> Option<u32> {
        match self {
            RetryPolicy::Bounded { retries } => Some(retries.saturating_add(1)),
            _ => None,
        }
    }

    /// The timer to arm after the `failures`-th failed send of a frame; `configured` is the
    /// retry-timer setting resolved against the backend (`None` = no timer).
    pub fn delay(self, configured: Option<Duration>, failures: u32) -> Option<Duration> {
        match self {
            RetryPolicy::Timer | RetryPolicy::SmallFirst => configured,
            RetryPolicy::Bounded { .. } => Some(configured.unwrap_or(BASE_DELAY)),
            RetryPolicy::Backoff { cap } => {
                let base = configured.unwrap_or(BASE_DELAY);
                let shift = failures.saturating_sub(1).min(30);
                Some(base.saturating_mul(1 << shift).min(cap.max(base)))
            }
            RetryPolicy::Room => Some(ROOM_SAFETY_NET),
        }
    }

    /// Whether a write event reporting `free` bytes of send space (negative: unknown)
    /// should retry a deferred `frame_len`-byte frame.
    pub fn retry_on_write(self, free: i64, frame_len: usize) -> bool {
        match self {
            RetryPolicy::Room => free < 0 || free as u64 >= frame_len as u64,
            _ => true,
        }
    }

    /// Whether frames of other flows may go ahead of a deferred frame.
    pub fn looks_ahead(self) -> bool {
        self == RetryPolicy::SmallFirst
    }

    /// Whether a guest kick retries a deferred frame.
    pub fn retry_on_kick(self) -> bool {
        self != RetryPolicy::Room
    }

    /// The free space to ask the poller to wait for before reporting the socket writable
    /// (macOS NOTE_LOWAT), for a deferred `frame_len`-byte frame.
    pub fn low_water(self, frame_len: usize) -> Option<usize> {
        match self {
            RetryPolicy::Room => Some(frame_len),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_every_policy() {
        for (s, p) in [
            ("timer", RetryPolicy::Timer),
            ("room", RetryPolicy::Room),
            ("small-first", RetryPolicy::SmallFirst),
            ("bounded:10", RetryPolicy::Bounded { retries: 10 }),
            ("bounded:0", RetryPolicy::Bounded { retries: 0 }),
            (
                "backoff:800",
                RetryPolicy::Backoff {
                    cap: Duration::from_micros(800),
                },
            ),
        ] {
            assert_eq!(s.parse::<RetryPolicy>(), Ok(p));
            assert_eq!(p.to_string(), s);
        }
        assert_eq!(
            "backoff".parse::<RetryPolicy>(),
            Ok(RetryPolicy::Backoff {
                cap: DEFAULT_BACKOFF_CAP
            })
        );
        for bad in [
            "",
            "bounded",
            "bounded:",
            "bounded:-1",
            "bounded:99999999999",
            "backoff:10",
            "backoff:x",
            "timer:5",
            "room:1",
            "small-first:1",
            "smallfirst",
            "sometimes",
        ] {
            let e = bad.parse::<RetryPolicy>().unwrap_err().to_string();
            assert!(
                !e.contains('\n') && e.contains("expected timer"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn delays_follow_the_policy() {
        let d50 = Some(BASE_DELAY);
        assert_eq!(RetryPolicy::Timer.delay(None, 3), None);
        assert_eq!(RetryPolicy::Timer.delay(d50, 3), d50);
        assert_eq!(RetryPolicy::Bounded { retries: 2 }.delay(None, 1), d50);
        let b = RetryPolicy::Backoff {
            cap: Duration::from_micros(300),
        };
        let us = |f| b.delay(None, f).unwrap().as_micros();
        assert_eq!(
            (us(1), us(2), us(3), us(4), us(40)),
            (50, 100, 200, 300, 300)
        );
        assert_eq!(RetryPolicy::Room.delay(d50, 1), Some(ROOM_SAFETY_NET));
        assert_eq!(
            RetryPolicy::Bounded { retries: 10 }.max_failed_sends(),
            Some(11)
        );
        assert_eq!(RetryPolicy::Timer.max_failed_sends(), None);
        assert!(!RetryPolicy::Room.retry_on_write(17996, 65226));
        assert!(RetryPolicy::Room.retry_on_write(65226, 65226));
        assert!(RetryPolicy::Room.retry_on_write(-1, 65226));
        assert!(RetryPolicy::Timer.retry_on_write(0, 65226));
        assert_eq!(RetryPolicy::SmallFirst.delay(None, 3), None);
        assert_eq!(RetryPolicy::SmallFirst.delay(d50, 3), d50);
        assert!(RetryPolicy::SmallFirst.retry_on_kick() && RetryPolicy::SmallFirst.looks_ahead());
        assert!(!RetryPolicy::Timer.looks_ahead());
    }
}
