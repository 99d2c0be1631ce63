//! An input with a bad line followed by a stream error (a corrupt gzip trailer, a line longer
//! than the reader accepts) reports the bad line: errors come in input order, whatever order
//! the reading and parsing threads finish in. Found by `fuzz_parsers` (the two errors used to
//! race, so the same file gave either message).

use std::io::Write;
use std::path::PathBuf;

use analyze::{Error, ReportOptions};

const TRACE: &str = "ts_ns,tid,probe,fd,queue,len,data,retries,wait_ns,errno\n\
1000000000,101,tx_frame,7,,65226,,,,\n\
1000002000,101,tx_frame,7,,oops,,,,\n\
1000004000,101,tx_frame,7,,65226,,,,\n";

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// Runs `report` many times (the race needs a few tries to show) and returns every message.
fn messages(data: &[u8]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("t.csv");
    std::fs::write(&path, data).unwrap();
    (0..200)
        .map(|_| {
            match analyze::render_report(std::slice::from_ref(&path), &ReportOptions::default()) {
                Ok(out) => panic!("a bad line was accepted: {out}"),
                Err(e @ Error::Field { .. }) => {
                    assert!(e.to_string().contains("t.csv:3: field `len`"), "{e}");
                    e.to_string()
                }
                Err(e) => panic!("the stream error overtook line 3's: {e}"),
            }
        })
        .collect()
}

#[test]
fn a_bad_line_before_a_corrupt_gzip_trailer_is_the_error() {
    let mut gz = gzip(TRACE.as_bytes());
    let crc = gz.len() - 8; // the trailer: CRC-32, then the length
    gz[crc] ^= 0xff;
    messages(&gz);
}

#[test]
fn a_bad_line_before_an_endless_line_is_the_error() {
    let mut data = TRACE.as_bytes().to_vec();
    data.extend(std::iter::repeat_n(b'1', analyze::input::MAX_LINE + 10));
    messages(&data);
}
