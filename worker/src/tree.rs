//! Keeping a function's whole process tree together so that it can be killed as one.
//!
//! - Unix: the child leads its own process group (`process_group(0)` at spawn); killing `-pgid`
//!   kills the tree. Nothing to do here.
//! - Windows: the child is put in a job object with `JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE` right
//!   after it starts; `TerminateJobObject` kills everything it started (a grandchild started in
//!   the instant before the assignment escapes; `taskkill /T` is the fallback for those).

#[cfg(windows)]
mod imp {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};

    use windows_sys::Win32::Foundation::{CloseHandle, HANDLE};
    use windows_sys::Win32::System::JobObjects::{
        AssignProcessToJobObject, CreateJobObjectW, JobObjectExtendedLimitInformation, SetInformationJobObject,
        TerminateJobObject, JOBOBJECT_EXTENDED_LIMIT_INFORMATION, JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
    };

    /// Job handles by child pid (handles are pointers; kept as usize to be Send).
    fn jobs() -> &'static Mutex<HashMap<u32, usize>> {
        static JOBS: OnceLock<Mutex<HashMap<u32, usize>>> = OnceLock::new();
        JOBS.get_or_init(|| Mutex::new(HashMap::new()))
    }

    pub(crate) fn contain(child: &tokio::process::Child) {
        let (Some(pid), Some(process)) = (child.id(), child.raw_handle()) else { return };
        // SAFETY: plain Win32 calls on a handle we own (the job) and one tokio owns and keeps
        // open for the child's lifetime (the process); every failure is checked.
        unsafe {
            let job: HANDLE = CreateJobObjectW(std::ptr::null(), std::ptr::null());
            if job.is_null() {
                return;
            }
            let mut info: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = std::mem::zeroed();
            info.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
            let ok = SetInformationJobObject(
                job,
                JobObjectExtendedLimitInformation,
                &info as *const _ as *const core::ffi::c_void,
                size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32,
            );
            if ok == 0 || AssignProcessToJobObject(job, process as HANDLE) == 0 {
                CloseHandle(job);
                return;
            }
            jobs().lock().unwrap_or_else(|p| p.into_inner()).insert(pid, job as usize);
        }
    }

    /// Kills the tree; `false` if the child had no job (then use the fallback).
    pub(crate) fn kill(pid: u32) -> bool {
        let job = jobs().lock().unwrap_or_else(|p| p.into_inner()).remove(&pid);
        match job {
            // SAFETY: the handle came from CreateJobObjectW and is closed exactly once here.
            Some(job) => unsafe {
                TerminateJobObject(job as HANDLE, 1);
                CloseHandle(job as HANDLE);
                true
            },
            None => false,
        }
    }

    /// The child ended by itself: drop its job (closing it kills any leftovers).
    pub(crate) fn release(pid: u32) {
        if let Some(job) = jobs().lock().unwrap_or_else(|p| p.into_inner()).remove(&pid) {
            // SAFETY: as in `kill`.
            unsafe {
                CloseHandle(job as HANDLE);
            }
        }
    }
}

#[cfg(not(windows))]
mod imp {
    pub(crate) fn contain(_child: &tokio::process::Child) {}
    #[allow(dead_code)]
    pub(super) fn kill(_pid: u32) -> bool {
        false
    }
    pub(crate) fn release(_pid: u32) {}
}

#[cfg(windows)]
pub(crate) use imp::kill;
pub(crate) use imp::{contain, release};
