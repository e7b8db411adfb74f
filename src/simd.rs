//! Kernels compiled twice: for the default x86-64 target (SSE2's 4 lanes) and for AVX2 (8
//! lanes, 32-bit lane multiplies), the copy chosen at run time by what the CPU has.

/// `fn NAME(ARGS) { KERNEL(ARGS) }`, where the call goes to a copy of `KERNEL` compiled with
/// AVX2 when the CPU supports it. `KERNEL` must be `#[inline(always)]`, so that each copy
/// compiles it for its own target. Each lane runs the same IEEE or integer operations in
/// either copy, so results do not depend on the CPU.
macro_rules! avx2_dispatch {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) => $kernel:ident) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                fn avx2($($arg: $ty),*) {
                    $kernel($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2 (checked just above).
                    unsafe { avx2($($arg),*) };
                    return;
                }
            }
            $kernel($($arg),*)
        }
    };
}

pub(crate) use avx2_dispatch;
