//! Guest memory from SET_MEM_TABLE: each region is mapped from the fd QEMU sends, and
//! ring addresses (QEMU's own virtual addresses) are translated to guest physical ones.

use std::fs::File;

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
        let mmap = r
            .mmap_region::<()>(file)
            .map_err(|e| map_err(e.to_string()))?;
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
