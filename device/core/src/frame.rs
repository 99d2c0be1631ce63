//! Frames as the data path carries them: the size limits and [`TxFrame`], a frame to send
//! described by where its bytes already are.
//!
//! A leaf module: `net` (which builds frames from guest chains) and `backend` (which sends
//! them) both import it, and it imports neither.
//!
//! A guest's TX chain leaves the frame scattered over its descriptors in guest memory. The
//! kernel can gather those pieces itself in one `sendmsg`, so the device never copies a
//! frame into a buffer of its own: at 64 KiB frames that copy (and the zeroing of the
//! buffer before it) was a fifth of the worker's time. A `TxFrame` is that list of pieces
//! as iovecs, borrowed for `'a` from the memory they point into.

use std::marker::PhantomData;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;

/// Largest Ethernet frame carried (65562-byte guest buffer minus the 12-byte
/// virtio_net_hdr_v1).
pub const MAX_FRAME: usize = 65550;

/// Pieces one frame may have. Linux's virtio-net sends a header, the linear part and at
/// most 17 page fragments; a chain with more pieces than this is copied instead.
pub const MAX_IOV: usize = 32;

/// An unused iovec slot.
pub(crate) const EMPTY_IOV: libc::iovec = libc::iovec {
    iov_base: std::ptr::null_mut(),
    iov_len: 0,
};

/// The bytes of one frame as up to [`MAX_IOV`] pieces, valid for `'a`.
pub struct TxFrame<'a> {
    iov: [libc::iovec; MAX_IOV],
    n: usize,
    len: usize,
    _mem: PhantomData<&'a [u8]>,
}

/// The frame already has [`MAX_IOV`] pieces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyPieces;

impl<'a> TxFrame<'a> {
    pub fn new() -> TxFrame<'a> {
        TxFrame {
            iov: [EMPTY_IOV; MAX_IOV],
            n: 0,
            len: 0,
            _mem: PhantomData,
        }
    }

    /// A frame that is one contiguous buffer.
    pub fn from_slice(bytes: &'a [u8]) -> TxFrame<'a> {
        let mut f = TxFrame::new();
        f.push_raw(bytes.as_ptr(), bytes.len());
        f
    }

    /// Appends a piece of guest memory. The kernel reads it during the send, which is
    /// the same access `VolatileSlice` allows (no Rust reference to guest memory is made).
    pub fn push_volatile<B: BitmapSlice>(
        &mut self,
        slice: &VolatileSlice<'a, B>,
    ) -> Result<(), TooManyPieces> {
        if self.n == MAX_IOV {
            return Err(TooManyPieces);
        }
        // vm-memory's guard only owns a mapping with its `xen` feature, which this crate
        // does not enable: without it the pointer lives as long as the slice, i.e. 'a.
        let p = slice.ptr_guard().as_ptr();
        self.push_raw(p, slice.len());
        Ok(())
    }

    fn push_raw(&mut self, ptr: *const u8, len: usize) {
        if len == 0 {
            return;
        }
        self.iov[self.n] = libc::iovec {
            iov_base: ptr as *mut libc::c_void,
            iov_len: len,
        };
        self.n += 1;
        self.len += len;
    }

    /// Total bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The whole frame, for one `sendmsg`.
    pub(crate) fn iovecs(&self) -> &[libc::iovec] {
        &self.iov[..self.n]
    }

    /// `prefix`, then the frame's bytes from `offset` on: what a stream send still owes
    /// after a short write. Returns the number of iovecs filled in `out`.
    pub(crate) fn iovecs_after(
        &self,
        prefix: &[u8],
        mut offset: usize,
        out: &mut [libc::iovec; MAX_IOV + 1],
    ) -> usize {
        let mut k = 0;
        if !prefix.is_empty() {
            out[0] = libc::iovec {
                iov_base: prefix.as_ptr() as *mut libc::c_void,
                iov_len: prefix.len(),
            };
            k = 1;
        }
        for v in self.iovecs() {
            if offset >= v.iov_len {
                offset -= v.iov_len;
                continue;
            }
            out[k] = libc::iovec {
                // SAFETY: offset < iov_len, so the result stays inside the same piece.
                iov_base: unsafe { (v.iov_base as *mut u8).add(offset) }.cast(),
                iov_len: v.iov_len - offset,
            };
            offset = 0;
            k += 1;
        }
        k
    }
}

impl Default for TxFrame<'_> {
    fn default() -> Self {
        TxFrame::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of(iov: &[libc::iovec]) -> Vec<u8> {
        iov.iter()
            .flat_map(|v| {
                // SAFETY: the iovecs point into the test's live buffers.
                unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) }.to_vec()
            })
            .collect()
    }

    #[test]
    fn pieces_resume_at_any_offset() {
        let a = [1u8, 2, 3];
        let b = [4u8, 5];
        let c = [6u8, 7, 8, 9];
        let mut f = TxFrame::new();
        for s in [&a[..], &[][..], &b[..], &c[..]] {
            f.push_raw(s.as_ptr(), s.len());
        }
        assert_eq!(f.len(), 9);
        assert_eq!(f.iovecs().len(), 3, "the empty piece is not stored");
        assert_eq!(bytes_of(f.iovecs()), (1..=9).collect::<Vec<u8>>());
        let mut out = [EMPTY_IOV; MAX_IOV + 1];
        let whole: Vec<u8> = [0xaa, 0xbb].into_iter().chain(1..=9).collect();
        for off in 0..=9 {
            let k = f.iovecs_after(&[0xaa, 0xbb], off, &mut out);
            assert_eq!(
                bytes_of(&out[..k]),
                [&whole[..2], &whole[2 + off..]].concat()
            );
            let k = f.iovecs_after(&[], off, &mut out);
            assert_eq!(bytes_of(&out[..k]), whole[2 + off..].to_vec(), "{off}");
        }
    }

    #[test]
    fn refuses_a_piece_past_the_limit() {
        let mut buf = vec![0u8; MAX_IOV + 1];
        let mut f = TxFrame::new();
        let base = buf.as_mut_ptr();
        for i in 0..MAX_IOV {
            // SAFETY: i < buf.len(); the slice lives as long as buf.
            let s = unsafe { VolatileSlice::new(base.add(i), 1) };
            f.push_volatile(&s).unwrap();
        }
        // SAFETY: as above.
        let last = unsafe { VolatileSlice::new(base.add(MAX_IOV), 1) };
        assert_eq!(f.push_volatile(&last), Err(TooManyPieces));
        assert_eq!(f.len(), MAX_IOV);
    }
}
