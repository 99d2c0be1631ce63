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
use std::ops::Range;

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

/// A reused vector of iovecs for one system call at a time (a backend's scratch space).
#[derive(Default)]
pub(crate) struct IovBuf(pub(crate) Vec<libc::iovec>);

// SAFETY: plain addresses, filled at the start of each call for that call; nothing reads
// through them between calls.
unsafe impl Send for IovBuf {}

impl std::ops::Deref for IovBuf {
    type Target = Vec<libc::iovec>;
    fn deref(&self) -> &Vec<libc::iovec> {
        &self.0
    }
}

impl std::ops::DerefMut for IovBuf {
    fn deref_mut(&mut self) -> &mut Vec<libc::iovec> {
        &mut self.0
    }
}

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
}

impl<'a> TxFrame<'a> {
    /// The frame as the backends take it.
    pub fn as_frame(&self) -> FrameRef<'_> {
        FrameRef {
            iov: self.iovecs(),
            len: self.len,
        }
    }
}

impl Default for TxFrame<'_> {
    fn default() -> Self {
        TxFrame::new()
    }
}

/// One frame to send: its pieces, borrowed from a [`TxFrame`] or a [`TxList`].
#[derive(Clone, Copy)]
pub struct FrameRef<'a> {
    iov: &'a [libc::iovec],
    len: usize,
}

impl<'a> FrameRef<'a> {
    /// Total bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The whole frame, for one `sendmsg`.
    pub(crate) fn iovecs(&self) -> &'a [libc::iovec] {
        self.iov
    }

    /// Appends to `out` the iovecs of the frame's bytes from `offset` on: what a stream
    /// send still owes of it after a short write.
    pub(crate) fn iovecs_from(&self, offset: usize, out: &mut Vec<libc::iovec>) {
        iovecs_from(self.iov, offset, out)
    }
}

/// Where frame i of a [`TxList`] lies in its iovecs.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: u32,
    end: u32,
    len: usize,
}

/// The frames of one batch, in ring order, as the backends take them (a view of a
/// [`TxList`]).
#[derive(Clone, Copy)]
pub struct Frames<'a> {
    iov: &'a [libc::iovec],
    spans: &'a [Span],
}

impl<'a> Frames<'a> {
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Frame `i` (panics past the end, as slice indexing does).
    pub fn get(&self, i: usize) -> FrameRef<'a> {
        let s = self.spans[i];
        FrameRef {
            iov: &self.iov[s.start as usize..s.end as usize],
            len: s.len,
        }
    }

    pub fn first(&self) -> Option<FrameRef<'a>> {
        (!self.is_empty()).then(|| self.get(0))
    }

    /// Frames `r` of this batch (a shorter batch; nothing is copied).
    pub fn range(&self, r: Range<usize>) -> Frames<'a> {
        Frames {
            iov: self.iov,
            spans: &self.spans[r],
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = FrameRef<'a>> + 'a {
        let frames = *self;
        (0..frames.len()).map(move |i| frames.get(i))
    }
}

/// Storage for a batch of frames to send, reused from batch to batch so the data path
/// allocates nothing per frame: all frames' iovecs in one vector, and where each frame's
/// lie. Cleared at the start of each batch; its owner fills it and hands
/// [`TxList::frames`] to the backend while the memory the pieces point into is still
/// borrowed (the guest memory of one device pass), and never after.
#[derive(Default)]
pub struct TxList {
    iov: Vec<libc::iovec>,
    spans: Vec<Span>,
    /// Bytes of the frame being added (after the last `end_frame`).
    open_len: usize,
    /// Bytes of the frames added and ended.
    bytes: usize,
}

// SAFETY: the iovecs are plain addresses; a TxList never reads through them itself, and
// its owner only passes them to the kernel during the borrow they were taken under.
unsafe impl Send for TxList {}

impl TxList {
    pub fn new() -> TxList {
        TxList::default()
    }

    /// Forgets every frame (keeps the storage).
    pub fn clear(&mut self) {
        self.iov.clear();
        self.spans.clear();
        self.open_len = 0;
        self.bytes = 0;
    }

    /// Frames added and ended.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Bytes of the frames added and ended (what one send of the list carries).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn open_start(&self) -> usize {
        self.spans.last().map_or(0, |s| s.end as usize)
    }

    fn push_raw(&mut self, ptr: *const u8, len: usize) {
        if len == 0 {
            return;
        }
        self.iov.push(libc::iovec {
            iov_base: ptr as *mut libc::c_void,
            iov_len: len,
        });
        self.open_len += len;
    }

    /// Appends a piece of guest memory to the frame being added; at most [`MAX_IOV`]
    /// pieces per frame (one gathered send), as [`TxFrame::push_volatile`].
    pub fn push_volatile<B: BitmapSlice>(
        &mut self,
        slice: &VolatileSlice<'_, B>,
    ) -> Result<(), TooManyPieces> {
        if self.iov.len() - self.open_start() == MAX_IOV {
            return Err(TooManyPieces);
        }
        // As in TxFrame::push_volatile: without vm-memory's `xen` feature the pointer
        // lives as long as the slice.
        let p = slice.ptr_guard().as_ptr();
        self.push_raw(p, slice.len());
        Ok(())
    }

    /// Appends bytes of the device's own (a checksum the device completed) to the frame
    /// being added; they count toward [`MAX_IOV`] like a piece of guest memory. The
    /// caller keeps `bytes` where they are until the list is sent.
    pub fn push_bytes(&mut self, bytes: &[u8]) -> Result<(), TooManyPieces> {
        if self.iov.len() - self.open_start() == MAX_IOV {
            return Err(TooManyPieces);
        }
        self.push_raw(bytes.as_ptr(), bytes.len());
        Ok(())
    }

    /// Appends a frame that is one buffer (a copied chain); ends it.
    pub fn push_slice(&mut self, bytes: &[u8]) {
        self.cancel_frame();
        self.push_raw(bytes.as_ptr(), bytes.len());
        self.end_frame();
    }

    /// Appends a whole frame built elsewhere; ends it.
    pub fn push_frame(&mut self, frame: FrameRef<'_>) {
        self.cancel_frame();
        self.iov.extend_from_slice(frame.iov);
        self.open_len = frame.len;
        self.end_frame();
    }

    /// The pieces added since the last frame ended make a frame.
    pub fn end_frame(&mut self) {
        let start = self.open_start();
        let len = std::mem::take(&mut self.open_len);
        self.bytes += len;
        self.spans.push(Span {
            start: start as u32,
            end: self.iov.len() as u32,
            len,
        });
    }

    /// Drops the pieces added since the last frame ended.
    pub fn cancel_frame(&mut self) {
        let start = self.open_start();
        self.iov.truncate(start);
        self.open_len = 0;
    }

    pub fn frames(&self) -> Frames<'_> {
        Frames {
            iov: &self.iov,
            spans: &self.spans,
        }
    }
}

/// Appends to `out` the iovecs of `iov`'s bytes from `offset` on.
pub(crate) fn iovecs_from(iov: &[libc::iovec], mut offset: usize, out: &mut Vec<libc::iovec>) {
    for v in iov {
        if offset >= v.iov_len {
            offset -= v.iov_len;
            continue;
        }
        out.push(libc::iovec {
            // SAFETY: offset < iov_len, so the result stays inside the same piece.
            iov_base: unsafe { (v.iov_base as *mut u8).add(offset) }.cast(),
            iov_len: v.iov_len - offset,
        });
        offset = 0;
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
        let mut out = Vec::new();
        let whole: Vec<u8> = (1..=9).collect();
        for off in 0..=9 {
            out.clear();
            f.as_frame().iovecs_from(off, &mut out);
            assert_eq!(bytes_of(&out), whole[off..].to_vec(), "{off}");
        }
    }

    /// Frames added to a list come back as added, a cancelled one leaves no trace, and
    /// the storage is reused after `clear`.
    #[test]
    fn list_keeps_frames_apart_and_reuses_storage() {
        let a = [1u8, 2, 3];
        let b = [4u8, 5];
        let mut list = TxList::new();
        for round in 0..2 {
            list.clear();
            list.push_slice(&a);
            list.push_raw(b.as_ptr(), b.len());
            assert_eq!(list.bytes(), 3, "an open frame's bytes are not counted yet");
            list.cancel_frame();
            let mut f = TxFrame::new();
            f.push_raw(b.as_ptr(), b.len());
            f.push_raw(a.as_ptr(), a.len());
            list.push_frame(f.as_frame());
            list.push_slice(&b);
            let frames = list.frames();
            assert_eq!(frames.len(), 3, "round {round}");
            assert_eq!(list.bytes(), 3 + 5 + 2, "round {round}");
            let got: Vec<(usize, Vec<u8>)> = frames
                .iter()
                .map(|f| (f.len(), bytes_of(f.iovecs())))
                .collect();
            assert_eq!(
                got,
                [
                    (3, vec![1, 2, 3]),
                    (5, vec![4, 5, 1, 2, 3]),
                    (2, vec![4, 5])
                ]
            );
            let tail = frames.range(1..3);
            assert_eq!(tail.len(), 2);
            assert_eq!(bytes_of(tail.get(1).iovecs()), [4, 5]);
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
