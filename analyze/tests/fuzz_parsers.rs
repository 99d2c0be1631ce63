//! Fuzzing that stays in the suite (issue 12): arbitrary bytes and mutations of the valid
//! fixtures go through every library entry point that reads input (`report`, `timeline`,
//! `stalls`, `chrome`), in-process so a case costs a few hundred microseconds.
//!
//! What must hold on any input: no panic; an error is one line that starts with the file's
//! name and, for an error about the content, a line number that exists in the input
//! (`file:line:`); a field error after a one-line edit names exactly that line; the same
//! input gives the same output; output grows at most linearly with the input (no unbounded
//! blow-up from one bogus value); the four entry points agree on whether the input is bad.
//!
//! Cases found are kept in `fuzz_parsers.proptest-regressions` beside this file and re-run
//! first on every run.

use std::io::Read;
use std::path::{Path, PathBuf};

use analyze::chrome::ChromeOptions;
use analyze::stalls::StallOptions;
use analyze::timeline::{Selection, TimelineOptions};
use analyze::{Error, ReadOptions, ReportOptions};
use proptest::prelude::*;
use proptest::sample::Index;

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The plain-text fixtures (the gzip one is handled through its decoded text).
const TEXT_FIXTURES: [&str; 4] = [
    "trace.csv",
    "log_old.log",
    "log_prefix.log",
    "log_unified.log",
];

fn gunzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(data).read_to_end(&mut out)?;
    Ok(out)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// Lines as the reader counts them: a last line without newline counts too.
fn line_count(text: &[u8]) -> u64 {
    let newlines = text.iter().filter(|&&b| b == b'\n').count() as u64;
    newlines + u64::from(!text.is_empty() && text.last() != Some(&b'\n'))
}

/// What one entry point produced, as text, so runs can be compared.
#[derive(Debug, PartialEq)]
enum Outcome {
    Ok(String),
    Err(String),
}

/// Runs every entry point on `path`; each twice, to check determinism.
struct Runs {
    report: Result<String, Error>,
    report_interval: Result<String, Error>,
    timeline: Result<String, Error>,
    stalls: Result<String, Error>,
    chrome: Result<String, Error>,
}

fn run_all(path: &Path, lenient: bool) -> Runs {
    let paths = [path.to_path_buf()];
    let read = ReadOptions {
        lenient,
        ..ReadOptions::default()
    };
    let report = analyze::render_report(
        &paths,
        &ReportOptions {
            read: read.clone(),
            ..Default::default()
        },
    );
    let report_interval = analyze::render_report(
        &paths,
        &ReportOptions {
            read: read.clone(),
            by_interval_ns: Some(10_000_000),
            ..Default::default()
        },
    );
    let mut topts = TimelineOptions::new(Selection::Slowest(3));
    topts.read = read.clone();
    let timeline = analyze::timeline::collect(&paths, &topts)
        .map(|(t, _)| analyze::timeline::render_text(&t) + &analyze::timeline::render_json(&t));
    let stalls = analyze::stalls::find(
        &paths,
        &StallOptions {
            threshold_ns: 1,
            before_ns: 100_000,
            read: read.clone(),
        },
    )
    .map(|t| analyze::stalls::render_text(&t, 1));
    let mut chrome_out = Vec::new();
    let chrome = analyze::chrome::write_chrome(
        &paths,
        &ChromeOptions {
            frames: true,
            read: read.clone(),
        },
        &mut chrome_out,
    )
    .map(|_| {
        let text = String::from_utf8(chrome_out).expect("chrome output is UTF-8");
        serde_json::from_str::<serde_json::Value>(&text)
            .unwrap_or_else(|e| panic!("chrome output is not JSON ({e}): {text}"));
        text
    });
    Runs {
        report,
        report_interval,
        timeline,
        stalls,
        chrome,
    }
}

fn outcome(r: &Result<String, Error>) -> Outcome {
    match r {
        Ok(s) => Outcome::Ok(s.clone()),
        Err(e) => Outcome::Err(e.to_string()),
    }
}

/// The line an error message names after `name:`, if any.
fn named_line(msg: &str, name: &str) -> Option<u64> {
    let rest = msg.strip_prefix(name)?.strip_prefix(':')?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    if digits.is_empty() || !rest[digits.len()..].starts_with(':') {
        return None;
    }
    digits.parse().ok()
}

/// How the input was given: plain text, or gzip (whose decoded text may be unknown).
struct Input<'a> {
    /// The decoded text when known (a corrupt gzip stream has none).
    text: Option<&'a [u8]>,
    gzip: bool,
}

/// One entry point's error: one line, naming the file, and the line when it is about one.
fn check_error(err: &Error, what: &str, name: &str, input: &Input) -> Result<(), TestCaseError> {
    let msg = err.to_string();
    prop_assert!(!msg.contains('\n'), "{what}: error spans lines: {msg:?}");
    let needs_line = match err {
        Error::Header { .. }
        | Error::Field { .. }
        | Error::LineTooLong { .. }
        | Error::Binary { .. }
        | Error::OutOfOrder { .. }
        | Error::ResolvedWithoutBegin { .. } => true,
        Error::Empty { .. } => false,
        // A corrupt gzip stream: the decoder's message, after the file name.
        Error::Io { .. } => {
            prop_assert!(input.gzip, "{what}: I/O error on a plain file: {msg}");
            false
        }
        // Only `--by-interval` can say this, and its message names the event's line.
        Error::Flag { .. } => {
            prop_assert!(what == "report --by-interval", "{what}: flag error: {msg}");
            let at = format!("{name}:");
            prop_assert!(msg.contains(&at), "{what}: no {at}LINE in {msg:?}");
            return Ok(());
        }
        Error::Usage(_) | Error::OutputIsInput { .. } => {
            prop_assert!(false, "{what}: unexpected error kind: {msg}");
            false
        }
    };
    prop_assert!(
        msg.starts_with(name),
        "{what}: error does not name the file: {msg:?}"
    );
    if needs_line {
        let line = named_line(&msg, name);
        prop_assert!(line.is_some(), "{what}: error names no line: {msg:?}");
        let line = line.unwrap();
        prop_assert!(line >= 1, "{what}: line 0 in {msg:?}");
        if let Some(text) = input.text {
            let lines = line_count(text);
            prop_assert!(
                line <= lines,
                "{what}: line {line} named, the input has {lines}: {msg:?}"
            );
        }
    }
    Ok(())
}

/// Runs the entry points twice on `data` (written as `file`) and checks every property.
/// Returns the report's outcome for callers that check more.
fn check(data: &[u8], file: &str, lenient: bool) -> Result<Runs, TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join(file);
    std::fs::write(&path, data).unwrap();
    let name = path.display().to_string();
    let gz = data.starts_with(&[0x1f, 0x8b]);
    let decoded = if gz { gunzip(data).ok() } else { None };
    let input = Input {
        text: if gz { decoded.as_deref() } else { Some(data) },
        gzip: gz,
    };

    let first = run_all(&path, lenient);
    let second = run_all(&path, lenient);
    let pairs = [
        ("report", &first.report, &second.report),
        (
            "report --by-interval",
            &first.report_interval,
            &second.report_interval,
        ),
        ("timeline", &first.timeline, &second.timeline),
        ("stalls", &first.stalls, &second.stalls),
        ("chrome", &first.chrome, &second.chrome),
    ];
    // Output is at most linear in the input: a report has a bounded number of rows, a
    // timeline and a Perfetto event are a few hundred bytes per input line at most.
    let bound = 64 * 1024 + 400 * input.text.map_or(data.len(), <[u8]>::len);
    for (what, a, b) in pairs {
        prop_assert_eq!(outcome(a), outcome(b), "{} is not deterministic", what);
        // The interval table is bounded by its row cap instead: one bogus timestamp may
        // stretch it to MAX_INTERVALS rows (about 50 bytes each), never further.
        let bound = if what == "report --by-interval" {
            bound + analyze::interval::MAX_INTERVALS * 128
        } else {
            bound
        };
        match a {
            Ok(out) => prop_assert!(
                out.len() <= bound,
                "{what}: {} bytes of output for {} bytes of input",
                out.len(),
                data.len()
            ),
            Err(e) => {
                check_error(e, what, &name, &input)?;
                // --lenient skips and counts every line error; only stream errors stop it.
                prop_assert!(
                    !(lenient && e.is_line_error()),
                    "{what}: a line error under --lenient: {e}"
                );
            }
        }
    }
    // They all read through the same pipeline: a bad input is bad for all of them, and the
    // same first error is reported.
    let errs: Vec<(&str, Option<String>)> = [
        ("report", &first.report),
        ("timeline", &first.timeline),
        ("stalls", &first.stalls),
        ("chrome", &first.chrome),
    ]
    .into_iter()
    .map(|(w, r)| (w, r.as_ref().err().map(|e| e.to_string())))
    .collect();
    for (what, e) in &errs[1..] {
        prop_assert_eq!(e, &errs[0].1, "{} and report disagree", what);
    }
    Ok(first)
}

/// Values that have broken parsers before: overflow, sign, empty, non-numbers, binary.
const HOSTILE_VALUES: &[&[u8]] = &[
    b"",
    b"0",
    b"-1",
    b"-0",
    b"+5",
    b"9223372036854775807",
    b"9223372036854775808",
    b"-9223372036854775808",
    b"-9223372036854775809",
    b"18446744073709551615",
    b"18446744073709551616",
    b"99999999999999999999999999999999999999",
    b"4294967295",
    b"4294967296",
    b"1e30",
    b"NaN",
    b" 7",
    b"7 ",
    b"0x10",
    b"\0",
    b"\xff\xfe",
    b"\xc3",
    b"\t",
    b"\"7\"",
    b"enobufs_begin",
    b"enobufs_resolved",
    b"kevent_write",
    b"fd=-1",
    b"fd=99999999999999999999",
    b"size=18446744073709551616",
    b"resolved after -3 retries",
    b"resolved after 0 retries",
    b"resolved after 99999999999999999999 retries",
    b"2026-13-45T99:99:99.999999Z",
    b"[9999-01-01T00:00:00.000000Z",
    b"[0001-01-01T00:00:00.000000Z",
];

/// Numbers put in place of a number already there (`data=17996`, a CSV field, a timestamp
/// digit group): the values a parser may take but must not trust.
const NUMBERS: &[&[u8]] = &[
    b"0",
    b"-1",
    b"1000000000000",
    b"1000000000000000",
    b"4611686018427387903",
    b"9223372036854775807",
    b"9223372036854775808",
    b"18446744073709551616",
    b"99",
    b"00000000000000000000000000000000000000001",
];

/// Replaces the n-th run of ASCII digits in `line` (a leading `-` stays where it was).
fn set_number(line: &[u8], nth: Index, value: &[u8]) -> Vec<u8> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < line.len() {
        if line[i].is_ascii_digit() {
            let start = i;
            while i < line.len() && line[i].is_ascii_digit() {
                i += 1;
            }
            runs.push((start, i));
        } else {
            i += 1;
        }
    }
    if runs.is_empty() {
        return line.to_vec();
    }
    let (start, end) = runs[nth.index(runs.len())];
    [&line[..start], value, &line[end..]].concat()
}

/// Separators inserted as they are: a stray one splits or joins fields and lines.
const BYTES_TO_INSERT: &[&[u8]] = &[
    b"\0", b"\xff", b"\r", b"\n", b",", b"\r\n", b"#", b" ", b"@",
];

#[derive(Clone, Debug)]
enum Mutation {
    FlipByte(Index, u8),
    Truncate(Index),
    DuplicateLine(Index),
    RemoveLine(Index),
    SwapLines(Index, Index),
    /// Replace the n-th field (`,` in a trace, ` ` in a log) of a line.
    SetField(Index, Index, usize),
    SwapFields(Index, Index, Index),
    /// Replace the n-th number of a line with one of [`NUMBERS`].
    SetNumber(Index, Index, usize),
    Insert(Index, usize),
    DropFinalNewline,
    /// The whole input repeated (concatenated captures).
    Repeat,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        1 => (any::<Index>(), 1u8..=255).prop_map(|(i, x)| Mutation::FlipByte(i, x)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => any::<Index>().prop_map(Mutation::DuplicateLine),
        1 => any::<Index>().prop_map(Mutation::RemoveLine),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        3 => (any::<Index>(), any::<Index>(), 0..HOSTILE_VALUES.len())
            .prop_map(|(l, f, v)| Mutation::SetField(l, f, v)),
        1 => (any::<Index>(), any::<Index>(), any::<Index>())
            .prop_map(|(l, a, b)| Mutation::SwapFields(l, a, b)),
        3 => (any::<Index>(), any::<Index>(), 0..NUMBERS.len())
            .prop_map(|(l, n, v)| Mutation::SetNumber(l, n, v)),
        1 => (any::<Index>(), 0..BYTES_TO_INSERT.len()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => Just(Mutation::DropFinalNewline),
        1 => Just(Mutation::Repeat),
    ]
}

fn split_lines(data: &[u8]) -> (Vec<Vec<u8>>, bool) {
    let ends_nl = data.last() == Some(&b'\n');
    let body = if ends_nl {
        &data[..data.len() - 1]
    } else {
        data
    };
    if data.is_empty() {
        return (Vec::new(), false);
    }
    (
        body.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect(),
        ends_nl,
    )
}

fn join_lines(lines: &[Vec<u8>], ends_nl: bool) -> Vec<u8> {
    let mut out = lines.join(&b'\n');
    if ends_nl && !lines.is_empty() {
        out.push(b'\n');
    }
    out
}

fn separator(line: &[u8]) -> u8 {
    if line.contains(&b',') {
        b','
    } else {
        b' '
    }
}

fn set_field(line: &[u8], field: Index, value: &[u8]) -> Vec<u8> {
    let sep = separator(line);
    let mut fields: Vec<Vec<u8>> = line.split(|&b| b == sep).map(<[u8]>::to_vec).collect();
    let i = field.index(fields.len());
    fields[i] = value.to_vec();
    fields.join(&sep)
}

fn apply(data: &mut Vec<u8>, m: &Mutation) {
    let (mut lines, ends_nl) = split_lines(data);
    match m {
        Mutation::FlipByte(i, x) if !data.is_empty() => {
            let i = i.index(data.len());
            data[i] ^= x;
            return;
        }
        Mutation::Truncate(i) => {
            let at = i.index(data.len() + 1);
            data.truncate(at);
            return;
        }
        Mutation::Insert(i, b) => {
            let at = i.index(data.len() + 1);
            data.splice(at..at, BYTES_TO_INSERT[*b].iter().copied());
            return;
        }
        Mutation::DropFinalNewline => {
            if data.last() == Some(&b'\n') {
                data.pop();
            }
            return;
        }
        Mutation::Repeat => {
            let copy = data.clone();
            data.extend_from_slice(&copy);
            return;
        }
        _ if lines.is_empty() => return,
        Mutation::FlipByte(..) => return,
        Mutation::DuplicateLine(i) => {
            let i = i.index(lines.len());
            let line = lines[i].clone();
            lines.insert(i, line);
        }
        Mutation::RemoveLine(i) => {
            lines.remove(i.index(lines.len()));
        }
        Mutation::SwapLines(a, b) => {
            let (a, b) = (a.index(lines.len()), b.index(lines.len()));
            lines.swap(a, b);
        }
        Mutation::SetField(l, f, v) => {
            let l = l.index(lines.len());
            lines[l] = set_field(&lines[l], *f, HOSTILE_VALUES[*v]);
        }
        Mutation::SetNumber(l, n, v) => {
            let l = l.index(lines.len());
            lines[l] = set_number(&lines[l], *n, NUMBERS[*v]);
        }
        Mutation::SwapFields(l, a, b) => {
            let l = l.index(lines.len());
            let sep = separator(&lines[l]);
            let mut fields: Vec<Vec<u8>> =
                lines[l].split(|&b| b == sep).map(<[u8]>::to_vec).collect();
            let (a, b) = (a.index(fields.len()), b.index(fields.len()));
            fields.swap(a, b);
            lines[l] = fields.join(&sep);
        }
    }
    *data = join_lines(&lines, ends_nl);
}

/// Words of the two formats, so generated input reaches past the first check.
const TOKENS: &[&[u8]] = &[
    b"tx_frame",
    b"rx_frame",
    b"enobufs_begin",
    b"enobufs_retry",
    b"enobufs_resolved",
    b"kevent_write",
    b"timer_fired",
    b"guest_kick",
    b"[2026-03-01T10:00:00.100050Z DEBUG devices::virtio::net::unixgram] ",
    b"write_frame: ENOBUFS",
    b"write_frame: ENOBUFS resolved after ",
    b"kevent: WRITE fd=7 data=",
    b"Written eth frame to proxy: ",
    b" bytes",
    b"Written frame size=",
    b"# clock mono_ns=1 wall_ns=",
    b"Lost ",
    b" events",
];

/// Starts that make the rest a trace (with and without clock) or a log.
const PREFIXES: &[&[u8]] = &[
        b"",
        b"ts_ns,tid,probe,fd,queue,len,data,retries,wait_ns,errno\n",
        b"# clock mono_ns=1000000000 wall_ns=1772359200000000000\nts_ns,tid,probe,fd,queue,len,data,retries,wait_ns,errno\n",
        b"[2026-03-01T10:00:00.100000Z DEBUG utils::macos::epoll] kevent: WRITE fd=7 data=1\n",
];

/// Pieces arbitrary inputs are made of: raw bytes, and tokens that get past the format
/// detection and header check so the row and log parsers see the rest.
fn chunk() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..24),
        2 => prop::sample::select(HOSTILE_VALUES).prop_map(<[u8]>::to_vec),
        2 => prop::sample::select(BYTES_TO_INSERT).prop_map(<[u8]>::to_vec),
        2 => (0i64..3_000_000_000).prop_map(|n| n.to_string().into_bytes()),
        1 => prop::sample::select(TOKENS).prop_map(<[u8]>::to_vec),
    ]
}

fn arbitrary_input() -> impl Strategy<Value = Vec<u8>> {
    let prefix = prop::sample::select(PREFIXES);
    (prefix, prop::collection::vec(chunk(), 0..64)).prop_map(|(p, chunks)| {
        let mut out = p.to_vec();
        out.extend(chunks.concat());
        out
    })
}

/// 384 cases per property keeps the file at a few seconds in release; `PROPTEST_CASES=N` runs
/// a longer search by hand.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(384),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// Anything at all, plain or as the start of a trace or a log.
    #[test]
    fn arbitrary_bytes(data in arbitrary_input(), lenient in any::<bool>()) {
        check(&data, "input.csv", lenient)?;
    }

    /// Pure noise, including the gzip magic followed by garbage.
    #[test]
    fn raw_bytes(mut data in prop::collection::vec(any::<u8>(), 0..512), gz_magic in any::<bool>()) {
        if gz_magic {
            data.splice(0..0, [0x1f, 0x8b, 0x08, 0x00]);
        }
        check(&data, "raw", false)?;
    }

    /// The valid fixtures, edited a few times; gzip either edited as compressed bytes or
    /// edited as text and compressed again.
    #[test]
    fn mutated_fixtures(
        which in 0..TEXT_FIXTURES.len() + 2,
        edits in prop::collection::vec(mutation(), 1..5),
        lenient in any::<bool>(),
    ) {
        let (mut data, name, regzip) = match which {
            i if i < TEXT_FIXTURES.len() => (fixture(TEXT_FIXTURES[i]), TEXT_FIXTURES[i], false),
            i if i == TEXT_FIXTURES.len() => (fixture("trace.csv.gz"), "trace.csv.gz", false),
            _ => (gunzip(&fixture("trace.csv.gz")).unwrap(), "trace.csv.gz", true),
        };
        for m in &edits {
            apply(&mut data, m);
        }
        if regzip {
            data = gzip(&data);
        }
        check(&data, name, lenient)?;
    }

    /// One data line edited in place (line count unchanged): a field error, if any, names
    /// exactly that line, and nothing before it fails to parse.
    #[test]
    fn one_edited_line_is_the_one_named(
        which in 0..TEXT_FIXTURES.len(),
        line in any::<Index>(),
        field in any::<Index>(),
        value in 0..HOSTILE_VALUES.len(),
        number in prop::option::of(0..NUMBERS.len()),
    ) {
        let name = TEXT_FIXTURES[which];
        let (mut lines, ends_nl) = split_lines(&fixture(name));
        // The trace's clock comment and header decide the format: edits there are other tests.
        let first_data = if name == "trace.csv" { 2 } else { 0 };
        let k = first_data + line.index(lines.len() - first_data);
        lines[k] = match number {
            Some(n) => set_number(&lines[k], field, NUMBERS[n]),
            None => set_field(&lines[k], field, HOSTILE_VALUES[value]),
        };
        let data = join_lines(&lines, ends_nl);
        let runs = check(&data, name, false)?;
        if let Err(e @ (Error::Field { line, .. } | Error::Binary { line, .. })) = &runs.report {
            prop_assert_eq!(*line, k as u64 + 1, "wrong line in: {}", e);
        }
    }
}

/// The checks themselves catch what they claim to: a multi-line error, a missing line and a
/// line past the end are refused.
#[test]
fn the_error_checks_bite() {
    let input = Input {
        text: Some(b"a\nb\n"),
        gzip: false,
    };
    let field = |line| Error::Field {
        file: "f".into(),
        line,
        field: "ts_ns",
        msg: "bad".into(),
    };
    assert!(check_error(&field(2), "report", "f", &input).is_ok());
    assert!(check_error(&field(3), "report", "f", &input).is_err());
    assert!(check_error(&field(0), "report", "f", &input).is_err());
    let multi = Error::Field {
        file: "f".into(),
        line: 1,
        field: "ts_ns",
        msg: "bad\nsecond line".into(),
    };
    assert!(check_error(&multi, "report", "f", &input).is_err());
    assert!(check_error(&Error::Usage("x".into()), "report", "f", &input).is_err());
    let io = Error::io("f", std::io::Error::other("corrupt deflate stream"));
    assert!(check_error(&io, "report", "f", &input).is_err());
}
