//! Guest memory from SET_MEM_TABLE: each region is mapped from the fd QEMU sends, and
//! ring addresses (QEMU's own virtual addresses) are translated to guest physical ones.
//!
//! A front end can lie about its fds: a region larger than its file, or a file it truncates
//! later, makes our first access past the end raise SIGBUS. Regions past the end of their
//! file are refused here; shrinking later is prevented with F_SEAL_SHRINK where the file
//! accepts seals, and survived by the guard in `sigbus.rs` where it does not.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use vhost::vhost_user::message::VhostUserMemoryRegion;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("memory table has {regions} regions but {fds} fds")]
    FdCount { regions: usize, fds: usize },
    #[error("region {index} (guest 0x{gpa:x}, {size} bytes at fd offset 0x{offset:x}): mmap failed: {detail}")]
    Map {
        index: usize,
        gpa: u64,
        size: u64,
        offset: u64,
        detail: String,
    },
    #[error("region {index}: {size} bytes at fd offset 0x{offset:x} go past the end of its file ({file_len} bytes)")]
    BeyondFile {
        index: usize,
        size: u64,
        offset: u64,
        file_len: u64,
    },
    #[error("region {index}: fstat of its fd failed: {source}")]
    Stat {
        index: usize,
        #[source]
        source: io::Error,
    },
    #[error("regions overlap or are unusable: {0}")]
    Layout(String),
    #[error("address 0x{0:x} of QEMU's address space is in no memory region")]
    Unmapped(u64),
}

/// Where one region sits in QEMU's address space and in the guest's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionMap {
    pub guest_phys: u64,
    pub size: u64,
    pub user_addr: u64,
}

/// Maps every region; returns the guest memory and the translation table.
pub fn map_table(
    regions: &[VhostUserMemoryRegion],
    files: Vec<File>,
) -> Result<(GuestMemoryMmap, Vec<RegionMap>), MemoryError> {
    if regions.len() != files.len() {
        return Err(MemoryError::FdCount {
            regions: regions.len(),
            fds: files.len(),
        });
    }
    let mut mapped = Vec::with_capacity(regions.len());
    let mut table = Vec::with_capacity(regions.len());
    for (index, (r, file)) in regions.iter().zip(files).enumerate() {
        // Copies: the message struct is packed.
        let (gpa, size, user_addr, offset) =
            (r.guest_phys_addr, r.memory_size, r.user_addr, r.mmap_offset);
        let map_err = |detail: String| MemoryError::Map {
            index,
            gpa,
            size,
            offset,
            detail,
        };
        let sealed = check_file(index, &file, offset, size)?;
        let mmap = r
            .mmap_region::<()>(file)
            .map_err(|e| map_err(e.to_string()))?;
        crate::sigbus::register(mmap.as_ptr(), mmap.size());
        if !sealed {
            tracing::info!(
                region = index,
                "guest memory fd cannot be sealed against shrinking; the SIGBUS guard covers it"
            );
        }
        let region = GuestRegionMmap::new(mmap, GuestAddress(gpa))
            .ok_or_else(|| map_err("region does not fit the guest address space".into()))?;
        mapped.push(region);
        table.push(RegionMap {
            guest_phys: gpa,
            size,
            user_addr,
        });
    }
    let mem =
        GuestMemoryMmap::from_regions(mapped).map_err(|e| MemoryError::Layout(e.to_string()))?;
    Ok((mem, table))
}

/// The file's length, if it is a regular file (memfd, tmpfs, hugetlbfs); `None` for other
/// kinds, whose size fstat does not report.
fn file_len(index: usize, file: &File) -> Result<Option<u64>, MemoryError> {
    let meta = file
        .metadata()
        .map_err(|source| MemoryError::Stat { index, source })?;
    Ok(meta.is_file().then_some(meta.len()))
}

/// Refuses a region past the end of its file, then seals the file against shrinking if it
/// can; returns whether the file is now sealed (or of a kind that cannot shrink).
fn check_file(index: usize, file: &File, offset: u64, size: u64) -> Result<bool, MemoryError> {
    let fits = |len: Option<u64>| match len {
        None => Ok(()),
        Some(file_len) if offset.checked_add(size).is_some_and(|end| end <= file_len) => Ok(()),
        Some(file_len) => Err(MemoryError::BeyondFile {
            index,
            size,
            offset,
            file_len,
        }),
    };
    let len = file_len(index, file)?;
    fits(len)?;
    if len.is_none() {
        return Ok(true);
    }
    let sealed = seal_shrink(file);
    // It may have shrunk between the first look and the seal.
    if sealed {
        fits(file_len(index, file)?)?;
    }
    Ok(sealed)
}

/// Adds F_SEAL_SHRINK (QEMU's memfd backend with seal=on has it already). Fails for files
/// that take no seals (EINVAL: tmpfs and hugetlbfs files) and memfds created without
/// MFD_ALLOW_SEALING or with F_SEAL_SEAL (EPERM).
fn seal_shrink(file: &File) -> bool {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on an fd we own, integer arguments only.
    let seals = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
    if seals >= 0 && seals & libc::F_SEAL_SHRINK != 0 {
        return true;
    }
    // SAFETY: as above.
    unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) == 0 }
}

/// QEMU's virtual address -> guest physical address.
pub fn user_to_guest(table: &[RegionMap], ua: u64) -> Result<u64, MemoryError> {
    table
        .iter()
        .find(|r| ua >= r.user_addr && ua - r.user_addr < r.size)
        .map(|r| r.guest_phys + (ua - r.user_addr))
        .ok_or(MemoryError::Unmapped(ua))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translates_within_regions_only() {
        let t = [
            RegionMap {
                guest_phys: 0,
                size: 0x1000,
                user_addr: 0x7f00_0000_0000,
            },
            RegionMap {
                guest_phys: 0x10_0000,
                size: 0x2000,
                user_addr: 0x7e00_0000_0000,
            },
        ];
        assert_eq!(user_to_guest(&t, 0x7f00_0000_0010).unwrap(), 0x10);
        assert_eq!(user_to_guest(&t, 0x7e00_0000_1fff).unwrap(), 0x10_1fff);
        assert!(matches!(
            user_to_guest(&t, 0x7e00_0000_2000),
            Err(MemoryError::Unmapped(_))
        ));
        assert!(matches!(
            user_to_guest(&t, 0x1000),
            Err(MemoryError::Unmapped(0x1000))
        ));
    }
}
