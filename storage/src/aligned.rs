//! Block-aligned heap buffers for O_DIRECT I/O.
//!
//! O_DIRECT needs the buffer address, the file position and the length all aligned to the
//! device's block. `AlignedBuf` owns one such allocation, implements compio's buffer traits
//! so it can be handed to the ring, and can be frozen into `Bytes` without a copy.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::mem::MaybeUninit;
use std::ptr::NonNull;

use bytes::Bytes;
use compio::buf::{IoBuf, IoBufMut, SetLen};

/// Alignment and granularity of every direct I/O: the physical block of the disks we target.
pub const BLOCK_BYTES: usize = 4096;

/// Rounds `n` up to a multiple of [`BLOCK_BYTES`].
pub(crate) const fn align_up(n: u64) -> u64 {
    n.div_ceil(BLOCK_BYTES as u64) * BLOCK_BYTES as u64
}

/// Rounds `n` down to a multiple of [`BLOCK_BYTES`].
pub(crate) const fn align_down(n: u64) -> u64 {
    n - n % BLOCK_BYTES as u64
}

/// A zero-initialised, [`BLOCK_BYTES`]-aligned buffer with a fixed capacity.
///
/// `len` counts the bytes in use; the capacity is always a whole number of blocks. The
/// allocation starts zeroed, so padding written after `len` is zeros unless reused memory
/// is handed out again; [`AlignedBuf::zero_pad_to_block`] restores that before a write.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    capacity: usize,
    /// The memory is an anonymous mapping of its own (see [`AlignedBuf::mapped`]), released
    /// with `munmap`; otherwise it came from the global allocator.
    mapped: bool,
}

// SAFETY: the buffer exclusively owns its allocation; moving it between threads moves that
// ownership (it is handed to `Bytes::from_owner`, which requires `Send`).
unsafe impl Send for AlignedBuf {}
// SAFETY: `&AlignedBuf` only gives read access to initialised bytes.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Allocates a zeroed buffer of at least `capacity` bytes (rounded up to whole blocks).
    ///
    /// # Panics
    /// If `capacity` is zero or the allocation fails (the process cannot continue then).
    pub fn with_capacity(capacity: usize) -> Self {
        assert!(capacity > 0, "an aligned buffer needs a capacity");
        let capacity = align_up(capacity as u64) as usize;
        let layout = Self::layout(capacity);
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout)
        };
        Self {
            ptr,
            len: 0,
            capacity,
            mapped: false,
        }
    }

    /// Like [`AlignedBuf::with_capacity`], but the memory is a private anonymous mapping of
    /// its own: the kernel hands it out zeroed and only the pages actually written become
    /// resident. For the log's write chunks (1 MiB each, up to `write_chunks_max` per
    /// partition), of which a partition with small batches only ever touches the start:
    /// `alloc_zeroed` at this alignment allocates and then `memset`s the whole capacity,
    /// which costs the CPU to fault in and clear every page and keeps all of them resident.
    ///
    /// # Panics
    /// If `capacity` is zero or the mapping fails (the process cannot continue then).
    pub fn mapped(capacity: usize) -> Self {
        assert!(capacity > 0, "an aligned buffer needs a capacity");
        let capacity = align_up(capacity as u64) as usize;
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                capacity,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            std::alloc::handle_alloc_error(Self::layout(capacity))
        }
        let Some(ptr) = NonNull::new(raw.cast::<u8>()) else {
            std::alloc::handle_alloc_error(Self::layout(capacity))
        };
        // Mappings are page aligned; the page is at least a block on the targets we run on.
        assert_eq!(
            ptr.as_ptr() as usize % BLOCK_BYTES,
            0,
            "a mapping is block aligned"
        );
        Self {
            ptr,
            len: 0,
            capacity,
            mapped: true,
        }
    }

    fn layout(capacity: usize) -> Layout {
        Layout::from_size_align(capacity, BLOCK_BYTES).expect("capacity fits a layout")
    }

    /// Bytes in use.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no bytes are in use.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Total bytes the buffer can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes that can still be appended.
    pub fn remaining(&self) -> usize {
        self.capacity - self.len
    }

    /// The bytes in use.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the allocation is zero-initialised, so every byte below capacity is initialised.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// Appends `src`.
    ///
    /// # Panics
    /// If `src` does not fit: callers check [`AlignedBuf::remaining`] first.
    pub fn extend_from_slice(&mut self, src: &[u8]) {
        assert!(src.len() <= self.remaining(), "aligned buffer overflow");
        // SAFETY: bounds checked above; the regions cannot overlap (we own ours exclusively).
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.as_ptr().add(self.len), src.len());
        }
        self.len += src.len();
    }

    /// Forgets the contents (the memory is kept, not zeroed).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Shortens the buffer to `len` bytes.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Zeroes the bytes from `len` up to the next block boundary and extends `len` to it, so
    /// the buffer can be written with O_DIRECT. Returns the padded length.
    pub fn zero_pad_to_block(&mut self) -> usize {
        let padded = align_up(self.len as u64) as usize;
        // SAFETY: padded <= capacity because capacity is a whole number of blocks.
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr().add(self.len), 0, padded - self.len) };
        self.len = padded;
        padded
    }

    /// Turns the buffer into `Bytes` without copying.
    pub fn freeze(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.mapped {
            // SAFETY: mapped in `mapped` with this same length, and unmapped only here.
            let rc = unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.capacity) };
            debug_assert_eq!(rc, 0, "munmap of an aligned buffer");
        } else {
            // SAFETY: allocated in `with_capacity` with this same layout.
            unsafe { dealloc(self.ptr.as_ptr(), Self::layout(self.capacity)) };
        }
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl IoBuf for AlignedBuf {
    fn as_init(&self) -> &[u8] {
        self.as_slice()
    }
}

impl SetLen for AlignedBuf {
    unsafe fn set_len(&mut self, len: usize) {
        debug_assert!(len <= self.capacity);
        self.len = len;
    }
}

impl IoBufMut for AlignedBuf {
    fn as_uninit(&mut self) -> &mut [MaybeUninit<u8>] {
        // SAFETY: the allocation is valid for `capacity` bytes and we hold `&mut self`.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.ptr.as_ptr().cast::<MaybeUninit<u8>>(),
                self.capacity,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_and_padding() {
        let mut buf = AlignedBuf::with_capacity(5000);
        assert_eq!(buf.capacity(), 8192);
        assert_eq!(buf.as_slice().as_ptr() as usize % BLOCK_BYTES, 0);
        buf.extend_from_slice(&[7u8; 10]);
        assert_eq!(buf.zero_pad_to_block(), 4096);
        assert_eq!(&buf.as_slice()[..10], &[7u8; 10]);
        assert!(buf.as_slice()[10..].iter().all(|&b| b == 0));
        let bytes = buf.freeze();
        assert_eq!(bytes.len(), 4096);
        assert_eq!(bytes.as_ptr() as usize % BLOCK_BYTES, 0);
    }

    #[test]
    fn mapped_buffers_start_zeroed_and_aligned() {
        let mut buf = AlignedBuf::mapped(1 << 20);
        assert_eq!(buf.capacity(), 1 << 20);
        assert_eq!(buf.as_slice().as_ptr() as usize % BLOCK_BYTES, 0);
        buf.extend_from_slice(&[7u8; 5000]);
        assert_eq!(buf.zero_pad_to_block(), 8192);
        assert!(buf.as_slice()[5000..].iter().all(|&b| b == 0));
        // SAFETY (test): the whole capacity is initialised (zeroed by the kernel).
        unsafe { buf.set_len(1 << 20) };
        assert!(buf.as_slice()[8192..].iter().all(|&b| b == 0));
        buf.clear();
        let bytes = buf.freeze();
        assert!(bytes.is_empty());
    }

    #[test]
    fn rounding() {
        assert_eq!(align_up(0), 0);
        assert_eq!(align_up(1), 4096);
        assert_eq!(align_down(4097), 4096);
        assert_eq!(align_up(8192), 8192);
    }
}
