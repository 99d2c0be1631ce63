//! The one setting that decides whether a deferred TX frame is retried on a timer.
//!
//! A frame the proxy refused waits for a write event or a guest kick. macOS's kqueue may
//! never report the socket writable again after ENOBUFS (the hang libkrun's virtio-net
//! unixgram backend fixed in PR 556 with a 50 µs one-shot timer), so a datagram backend
//! on macOS asks for a timer by default; everything else relies on events. Front ends
//! override that here, and only here.

use std::time::Duration;

/// When the worker retries a deferred frame by itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RetryTimer {
    /// Whatever the backend asks for ([`crate::backend::Backend::default_retry_delay`]).
    #[default]
    BackendDefault,
    /// No timer: only write events and guest kicks retry.
    Off,
    /// A one-shot timer this long after every send that left the frame deferred.
    After(Duration),
}

impl RetryTimer {
    /// A command-line delay in microseconds where 0 turns the timer off and no value
    /// keeps the backend's default.
    pub fn from_micros_flag(us: Option<u64>) -> RetryTimer {
        match us {
            None => RetryTimer::BackendDefault,
            Some(0) => RetryTimer::Off,
            Some(us) => RetryTimer::After(Duration::from_micros(us)),
        }
    }

    /// The delay to arm, given the backend's own default.
    pub fn delay(self, backend_default: Option<Duration>) -> Option<Duration> {
        match self {
            RetryTimer::BackendDefault => backend_default,
            RetryTimer::Off => None,
            RetryTimer::After(d) => Some(d),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_wins_over_the_backend_default() {
        let d50 = Some(Duration::from_micros(50));
        assert_eq!(RetryTimer::BackendDefault.delay(d50), d50);
        assert_eq!(RetryTimer::BackendDefault.delay(None), None);
        assert_eq!(RetryTimer::Off.delay(d50), None);
        let d7 = Duration::from_micros(7);
        assert_eq!(RetryTimer::After(d7).delay(None), Some(d7));
        assert_eq!(
            RetryTimer::from_micros_flag(None),
            RetryTimer::BackendDefault
        );
        assert_eq!(RetryTimer::from_micros_flag(Some(0)), RetryTimer::Off);
        assert_eq!(RetryTimer::from_micros_flag(Some(7)), RetryTimer::After(d7));
    }
}
