//! The command line (probes/capture.sh --syscalls passes what it resolved: the pid, the fd
//! of --socket, the epoll registrations of that fd made before the capture).
use clap::Parser;
use std::path::PathBuf;

/// Writes the vnetscope trace CSV (dtrace/README.md) of one process's unix-socket system
/// calls: send episodes on EAGAIN/ENOBUFS, frames, poller wake-ups. Needs root. Rows come
/// out in batches (every --drain-ms): sort by ts_ns (capture.sh does).
#[derive(Debug, Parser)]
#[command(name = "vnet-systrace", version)]
pub struct Args {
    /// Trace this running process (every thread); the capture ends when it exits.
    #[arg(
        short = 'p',
        long = "pid",
        value_name = "PID",
        conflicts_with = "command",
        required_unless_present = "command"
    )]
    pub pid: Option<i32>,

    /// Run CMD with `sh -c 'exec CMD'`, held until every probe is attached, and trace it (its
    /// stdout goes to our stderr unless -o is given). The capture ends when it exits.
    #[arg(short = 'c', long = "command", value_name = "CMD")]
    pub command: Option<String>,

    /// Trace only this fd, while it is an AF_UNIX socket (default: every AF_UNIX socket of
    /// the process).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(0..))]
    pub fd: Option<i32>,

    /// An epoll registration of --fd made before the capture started, as EPFD:DATA (DATA the
    /// epoll_data, decimal or 0x hex, from /proc/PID/fdinfo/EPFD). Repeatable.
    #[arg(long = "epoll", value_name = "EPFD:DATA", value_parser = parse_epoll, requires = "fd")]
    pub epoll: Vec<(i32, u64)>,

    /// No tx_frame/rx_frame rows: receives are not traced at all (episodes and wake-ups only).
    #[arg(long)]
    pub no_frames: bool,

    /// Write the CSV to FILE, which must not exist (default: stdout).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// The BPF ring buffer's size in MiB (a power of two): rows wait there between drains.
    #[arg(long, value_name = "MIB", default_value_t = 16, value_parser = parse_ring_mib)]
    pub ring_mib: u32,

    /// How often the ring is read, in milliseconds (up to a minute; the end of the process
    /// is still noticed within 100 ms).
    #[arg(long, value_name = "MS", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub drain_ms: u64,
}

fn parse_epoll(s: &str) -> Result<(i32, u64), String> {
    let (epfd, data) = s
        .split_once(':')
        .ok_or_else(|| format!("{s}: expected EPFD:DATA"))?;
    let epfd: i32 = epfd
        .parse()
        .ok()
        .filter(|&e| e >= 0)
        .ok_or_else(|| format!("{s}: EPFD {epfd} is not a file descriptor number"))?;
    let data = match data.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => data.parse(),
    }
    .map_err(|_| format!("{s}: DATA {data} is not a 64-bit unsigned number"))?;
    Ok((epfd, data))
}

fn parse_ring_mib(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n) if n.is_power_of_two() && n <= 1024 => Ok(n),
        _ => Err(format!("{s}: a power of two from 1 to 1024")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoll_registrations_parse_in_decimal_and_hex() {
        assert_eq!(parse_epoll("5:3"), Ok((5, 3)));
        assert_eq!(parse_epoll("5:0xffffffffffffffff"), Ok((5, u64::MAX)));
        assert!(parse_epoll("5").is_err());
        assert!(parse_epoll("-1:3").is_err());
        assert!(parse_epoll("5:18446744073709551616").is_err());
    }

    #[test]
    fn ring_sizes_are_powers_of_two() {
        assert_eq!(parse_ring_mib("16"), Ok(16));
        assert!(parse_ring_mib("0").is_err());
        assert!(parse_ring_mib("3").is_err());
        assert!(parse_ring_mib("2048").is_err());
    }

    #[test]
    fn a_target_is_required_and_only_one() {
        assert!(Args::try_parse_from(["vnet-systrace"]).is_err());
        assert!(Args::try_parse_from(["vnet-systrace", "-p", "1", "-c", "true"]).is_err());
        assert!(
            Args::try_parse_from(["vnet-systrace", "-p", "1", "--epoll", "5:3"]).is_err(),
            "--epoll needs --fd"
        );
        assert!(
            Args::try_parse_from(["vnet-systrace", "-p", "1", "--fd", "4", "--epoll", "5:3"])
                .is_ok()
        );
    }
}
