//! The memory routines a libc would provide — `memcpy`, `memmove`,
//! `memset`, `memcmp`, `bcmp` and, on a Cortex-M, the ARM EABI's
//! `__aeabi_mem*` — as simple byte loops: compiler-builtins' word-at-a-time
//! versions are ~2.5 KiB of flash. Shared by the freestanding image and the
//! QEMU image (`firmware/qemu`, through a `#[path]` module).

// The memory routines libc would provide; simple byte loops (the compiler
// leaves such a loop alone only in a function of that very name, so they are
// never inlined into another).
#[unsafe(no_mangle)]
#[inline(never)]
unsafe extern "C" fn memcpy(d: *mut u8, s: *const u8, n: usize) -> *mut u8 {
    let mut i = 0;
    while i < n {
        // SAFETY: the caller guarantees both ranges are valid for n bytes.
        unsafe { *d.add(i) = *s.add(i) };
        i += 1;
    }
    d
}

#[unsafe(no_mangle)]
#[inline(never)]
unsafe extern "C" fn memmove(d: *mut u8, s: *const u8, n: usize) -> *mut u8 {
    if (d as usize) < (s as usize) {
        let mut i = 0;
        while i < n {
            // SAFETY: as for memcpy; forward copy is safe when d < s.
            unsafe { *d.add(i) = *s.add(i) };
            i += 1;
        }
    } else {
        let mut i = n;
        while i > 0 {
            i -= 1;
            // SAFETY: as for memcpy; backward copy is safe when d ≥ s.
            unsafe { *d.add(i) = *s.add(i) };
        }
    }
    d
}

#[unsafe(no_mangle)]
#[inline(never)]
unsafe extern "C" fn memset(d: *mut u8, c: i32, n: usize) -> *mut u8 {
    let mut i = 0;
    while i < n {
        // SAFETY: the caller guarantees the range is valid for n bytes.
        unsafe { *d.add(i) = c as u8 };
        i += 1;
    }
    d
}

#[unsafe(no_mangle)]
#[inline(never)]
unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: the caller guarantees both ranges are valid for n bytes.
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

#[unsafe(no_mangle)]
unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}

// The ARM EABI names the compiler calls on a Cortex-M; compiler-builtins
// would otherwise supply word-at-a-time versions, ~2.5 KiB of them. Volatile
// accesses keep the compiler from turning the loops back into calls to
// these very routines (a call to `memcpy` is lowered to `__aeabi_memcpy`).
#[cfg(target_arch = "arm")]
mod aeabi {
    use core::ptr::{read_volatile, write_volatile};

    /// Copies `n` bytes from `s` to `d`, first to last or last to first.
    ///
    /// # Safety
    /// Both ranges are valid for `n` bytes.
    unsafe fn copy(d: *mut u8, s: *const u8, n: usize, forward: bool) {
        for k in 0..n {
            let i = if forward { k } else { n - 1 - k };
            // SAFETY: i < n, within both ranges.
            unsafe { write_volatile(d.add(i), read_volatile(s.add(i))) };
        }
    }

    /// Sets `n` bytes at `d` to `c`.
    ///
    /// # Safety
    /// The range is valid for `n` bytes.
    unsafe fn set(d: *mut u8, n: usize, c: u8) {
        for i in 0..n {
            // SAFETY: i < n, within the range.
            unsafe { write_volatile(d.add(i), c) };
        }
    }

    #[unsafe(no_mangle)]
    unsafe extern "C" fn __aeabi_memcpy(d: *mut u8, s: *const u8, n: usize) {
        // SAFETY: the caller's contract is memcpy's.
        unsafe { copy(d, s, n, true) };
    }

    #[unsafe(no_mangle)]
    unsafe extern "C" fn __aeabi_memcpy4(d: *mut u8, s: *const u8, n: usize) {
        // SAFETY: the caller's contract is memcpy's.
        unsafe { copy(d, s, n, true) };
    }

    #[unsafe(no_mangle)]
    unsafe extern "C" fn __aeabi_memcpy8(d: *mut u8, s: *const u8, n: usize) {
        // SAFETY: the caller's contract is memcpy's.
        unsafe { copy(d, s, n, true) };
    }

    #[unsafe(no_mangle)]
    unsafe extern "C" fn __aeabi_memmove(d: *mut u8, s: *const u8, n: usize) {
        // SAFETY: the caller's contract is memmove's; copying away from the
        // overlap is safe.
        unsafe { copy(d, s, n, (d as usize) < (s as usize)) };
    }

    #[unsafe(no_mangle)]
    unsafe extern "C" fn __aeabi_memmove4(d: *mut u8, s: *const u8, n: usize) {
        // SAFETY: as for __aeabi_memmove.
        unsafe { copy(d, s, n, (d as usize) < (s as usize)) };
    }

    #[unsafe(no_mangle)]
    unsafe extern "C" fn __aeabi_memmove8(d: *mut u8, s: *const u8, n: usize) {
        // SAFETY: as for __aeabi_memmove.
        unsafe { copy(d, s, n, (d as usize) < (s as usize)) };
    }

    #[unsafe(no_mangle)]
    unsafe extern "C" fn __aeabi_memset(d: *mut u8, n: usize, c: i32) {
        // SAFETY: the caller's contract is memset's (arguments reordered).
        unsafe { set(d, n, c as u8) };
    }

    #[unsafe(no_mangle)]
    unsafe extern "C" fn __aeabi_memclr(d: *mut u8, n: usize) {
        // SAFETY: the caller's contract is memset's.
        unsafe { set(d, n, 0) };
    }

    #[unsafe(no_mangle)]
    unsafe extern "C" fn __aeabi_memclr4(d: *mut u8, n: usize) {
        // SAFETY: the caller's contract is memset's.
        unsafe { set(d, n, 0) };
    }

    #[unsafe(no_mangle)]
    unsafe extern "C" fn __aeabi_memclr8(d: *mut u8, n: usize) {
        // SAFETY: the caller's contract is memset's.
        unsafe { set(d, n, 0) };
    }
}
