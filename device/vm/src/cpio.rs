//! A writer for the "newc" cpio format, the one the kernel unpacks as an initramfs.
//!
//! Writing the archive ourselves (instead of running `cpio`) lets the image contain
//! `/dev/console` as a character device without needing `mknod` (and root) on the host.

use std::io::{self, Write};

/// One archive member.
pub enum Entry<'a> {
    Dir {
        path: &'a str,
    },
    File {
        path: &'a str,
        mode: u32,
        data: &'a [u8],
    },
    Symlink {
        path: &'a str,
        target: &'a str,
    },
    CharDev {
        path: &'a str,
        major: u32,
        minor: u32,
    },
}

/// Writes members in order, then the trailer on [`CpioWriter::finish`].
pub struct CpioWriter<W: Write> {
    out: W,
    ino: u32,
    written: u64,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            ino: 1,
            written: 0,
        }
    }

    pub fn add(&mut self, entry: &Entry<'_>) -> io::Result<()> {
        let (path, mode, data, rdev): (&str, u32, &[u8], (u32, u32)) = match entry {
            Entry::Dir { path } => (path, 0o040_755, &[], (0, 0)),
            Entry::File { path, mode, data } => (path, 0o100_000 | (mode & 0o7777), data, (0, 0)),
            Entry::Symlink { path, target } => (path, 0o120_777, target.as_bytes(), (0, 0)),
            Entry::CharDev { path, major, minor } => (path, 0o020_600, &[], (*major, *minor)),
        };
        let ino = self.ino;
        self.ino += 1;
        let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
        self.header(ino, mode, nlink, data.len() as u32, rdev, path)?;
        self.write_padded(data)
    }

    fn header(
        &mut self,
        ino: u32,
        mode: u32,
        nlink: u32,
        filesize: u32,
        rdev: (u32, u32),
        name: &str,
    ) -> io::Result<()> {
        let fields = [
            ino,
            mode,
            0,
            0,
            nlink,
            0,
            filesize,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        let mut head = String::with_capacity(110);
        head.push_str("070701");
        for f in fields {
            head.push_str(&format!("{f:08x}"));
        }
        self.out.write_all(head.as_bytes())?;
        self.written += head.len() as u64;
        let mut name_bytes = name.as_bytes().to_vec();
        name_bytes.push(0);
        self.write_padded(&name_bytes)
    }

    // Header+name and data are each padded to a multiple of four bytes.
    fn write_padded(&mut self, data: &[u8]) -> io::Result<()> {
        self.out.write_all(data)?;
        self.written += data.len() as u64;
        let pad = (4 - (self.written % 4) as usize) % 4;
        self.out.write_all(&[0u8; 3][..pad])?;
        self.written += pad as u64;
        Ok(())
    }

    pub fn finish(mut self) -> io::Result<W> {
        self.header(0, 0, 1, 0, (0, 0), "TRAILER!!!")?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A minimal reader, enough to check what the writer produced.
    fn members(buf: &[u8]) -> Vec<(String, u32, Vec<u8>, u32, u32)> {
        let mut out = Vec::new();
        let mut pos = 0;
        let hex = |s: &[u8]| u32::from_str_radix(std::str::from_utf8(s).unwrap(), 16).unwrap();
        loop {
            assert_eq!(&buf[pos..pos + 6], b"070701", "magic at {pos}");
            let field = |i: usize| hex(&buf[pos + 6 + i * 8..pos + 14 + i * 8]);
            let (mode, size, rmaj, rmin, namesize) =
                (field(1), field(6), field(9), field(10), field(11));
            let name_start = pos + 110;
            let name =
                String::from_utf8(buf[name_start..name_start + namesize as usize - 1].to_vec())
                    .unwrap();
            let data_start = (name_start + namesize as usize).div_ceil(4) * 4;
            let data = buf[data_start..data_start + size as usize].to_vec();
            pos = (data_start + size as usize).div_ceil(4) * 4;
            if name == "TRAILER!!!" {
                assert_eq!(pos, buf.len());
                return out;
            }
            out.push((name, mode, data, rmaj, rmin));
        }
    }

    #[test]
    fn round_trips_every_kind_of_member() {
        let mut w = CpioWriter::new(Vec::new());
        w.add(&Entry::Dir { path: "bin" }).unwrap();
        w.add(&Entry::File {
            path: "bin/x",
            mode: 0o755,
            data: b"hello",
        })
        .unwrap();
        w.add(&Entry::Symlink {
            path: "bin/sh",
            target: "busybox",
        })
        .unwrap();
        w.add(&Entry::CharDev {
            path: "dev/console",
            major: 5,
            minor: 1,
        })
        .unwrap();
        let buf = w.finish().unwrap();
        assert_eq!(buf.len() % 4, 0);
        let m = members(&buf);
        assert_eq!(m.len(), 4);
        assert_eq!((m[0].0.as_str(), m[0].1), ("bin", 0o040_755));
        assert_eq!(
            (m[1].0.as_str(), m[1].1, m[1].2.as_slice()),
            ("bin/x", 0o100_755, &b"hello"[..])
        );
        assert_eq!((m[2].1, m[2].2.as_slice()), (0o120_777, &b"busybox"[..]));
        assert_eq!((m[3].1, m[3].3, m[3].4), (0o020_600, 5, 1));
    }
}
