//! How the kernel schedules the server's own threads.
//!
//! Linux 6.12 and later (EEVDF) let a thread ask for a shorter time slice: `sched_setattr`'s
//! `sched_runtime` under the normal class. The thread keeps its weight, so its share of the
//! CPU is unchanged, but its virtual deadline comes sooner. When it wakes up while a thread
//! with a longer slice computes, the kernel preempts that thread at once (`PREEMPT_SHORT`)
//! rather than letting it run out its slice (1.4 ms by default on a 2-core machine).
//!
//! `spellhost serve` asks for a short slice on its main thread
//! (`SPELLHOST_SERVICE_THREAD_SLICE_US`), and every thread started from it inherits it: the
//! HTTP runtime, the money writer. The threads that run and compile wasm go back to the
//! kernel's default as they start ([`crate::sandbox::ThreadPolicy`]). So a light tenant's cast
//! no longer waits, at each hand-off between threads, for a computing spell's slice to end
//! (benches/README.md, "Noisy neighbour"). Older kernels accept the call and ignore the slice;
//! other systems have no such call, and nothing changes there.

use std::time::Duration;

/// The shortest slice the kernel grants; shorter requests are raised to it.
pub const SLICE_MIN: Duration = Duration::from_micros(100);
/// The longest slice the kernel grants; longer requests are lowered to it.
pub const SLICE_MAX: Duration = Duration::from_millis(100);

/// Sets the calling thread's time slice: `Some` asks for that slice (the kernel keeps it
/// between [`SLICE_MIN`] and [`SLICE_MAX`]), `None` goes back to the kernel's default. Only a
/// thread of the normal class (`SCHED_OTHER`, `SCHED_BATCH`) is changed. Its class, nice value
/// and utilisation clamps are kept; its reset-on-fork flag is cleared, so that the threads it
/// starts afterwards inherit the slice (the server sets no such flag).
pub fn set_slice_of_this_thread(slice: Option<Duration>) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let mut attr = linux::attributes()?;
        let normal = [libc::SCHED_OTHER, libc::SCHED_BATCH];
        if !normal
            .iter()
            .any(|&class| attr.sched_policy == class as u32)
        {
            return Ok(());
        }
        attr.sched_flags = 0;
        attr.sched_runtime = slice.map_or(0, |slice| {
            u64::try_from(slice.clamp(SLICE_MIN, SLICE_MAX).as_nanos()).unwrap_or(u64::MAX)
        });
        linux::set_attributes(&attr)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = slice;
        Ok(())
    }
}

/// The calling thread's time slice as the kernel reports it; zero where the kernel has no
/// per-thread slices (before Linux 6.12).
pub fn slice_of_this_thread() -> std::io::Result<Duration> {
    #[cfg(target_os = "linux")]
    {
        Ok(Duration::from_nanos(linux::attributes()?.sched_runtime))
    }
    #[cfg(not(target_os = "linux"))]
    {
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

#[cfg(target_os = "linux")]
mod linux {
    //! The two system calls, which the `libc` crate declares but no safe wrapper offers
    //! (rustix, nix and thread-priority cover `sched_setscheduler` only, which has no slice).

    const SIZE: u32 = std::mem::size_of::<libc::sched_attr>() as u32;

    /// The calling thread's scheduling attributes (`sched_getattr`).
    pub fn attributes() -> std::io::Result<libc::sched_attr> {
        let mut attr = libc::sched_attr {
            size: SIZE,
            sched_policy: 0,
            sched_flags: 0,
            sched_nice: 0,
            sched_priority: 0,
            sched_runtime: 0,
            sched_deadline: 0,
            sched_period: 0,
        };
        #[expect(unsafe_code, reason = "sched_getattr has no safe wrapper")]
        // SAFETY: `attr` is a live, writable `sched_attr` of `SIZE` bytes, and `SIZE` is the
        // most the kernel writes; the kernel keeps no pointer to it. Thread id 0 is the
        // calling thread.
        let result = unsafe {
            libc::syscall(
                libc::SYS_sched_getattr,
                0,
                &raw mut attr,
                libc::c_uint::from(SIZE),
                0,
            )
        };
        if result == 0 {
            Ok(attr)
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// Sets the calling thread's scheduling attributes (`sched_setattr`).
    pub fn set_attributes(attr: &libc::sched_attr) -> std::io::Result<()> {
        let mut attr = libc::sched_attr {
            size: SIZE,
            ..*attr
        };
        #[expect(unsafe_code, reason = "sched_setattr has no safe wrapper")]
        // SAFETY: `attr` is a live, initialised, writable `sched_attr` whose `size` is its own
        // size: the kernel reads that many bytes and writes back at most its `size` field
        // (when it finds the size wrong); it keeps no pointer to it. Thread id 0 is the
        // calling thread.
        let result = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &raw mut attr, 0) };
        if result == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// Runs `check` on a thread of its own, so the test harness's threads keep their slice.
    fn on_a_new_thread<T: Send + 'static>(check: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(check).join().expect("thread")
    }

    #[test]
    fn a_thread_gets_the_slice_it_asks_for_its_children_inherit_it_and_it_can_go_back() {
        on_a_new_thread(|| {
            set_slice_of_this_thread(None).expect("default");
            let default = slice_of_this_thread().expect("read");
            if default.is_zero() {
                // Before Linux 6.12 there are no per-thread slices to set or read.
                return;
            }
            set_slice_of_this_thread(Some(Duration::from_micros(250))).expect("set");
            assert_eq!(
                slice_of_this_thread().expect("read"),
                Duration::from_micros(250)
            );
            let child = on_a_new_thread(|| slice_of_this_thread().expect("read"));
            assert_eq!(child, Duration::from_micros(250), "inherited");
            // Outside the kernel's range, the nearest end of it.
            set_slice_of_this_thread(Some(Duration::from_nanos(1))).expect("set");
            assert_eq!(slice_of_this_thread().expect("read"), SLICE_MIN);
            set_slice_of_this_thread(Some(Duration::from_secs(3))).expect("set");
            assert_eq!(slice_of_this_thread().expect("read"), SLICE_MAX);
            set_slice_of_this_thread(None).expect("default");
            assert_eq!(slice_of_this_thread().expect("read"), default);
        });
    }
}
