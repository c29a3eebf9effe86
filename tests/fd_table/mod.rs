//! A descriptor table filled under a lowered limit, for the tests of listeners whose
//! `accept()` fails for want of descriptors. Each such test is a binary of its own: a full
//! table would break any test running beside it.

/// The process's descriptor table, full under a soft limit of at most 256; dropping it frees
/// the table and restores the limit.
pub struct FullTable {
    fillers: Vec<std::fs::File>,
    saved: libc::rlimit,
}

impl FullTable {
    /// Lowers the limit and opens `/dev/null` until the next descriptor would fail with EMFILE.
    pub fn fill() -> FullTable {
        let saved = nofile_limit();
        let low = libc::rlimit {
            rlim_cur: 256.min(saved.rlim_cur),
            rlim_max: saved.rlim_max,
        };
        set_nofile_limit(&low);
        let mut fillers = Vec::new();
        loop {
            match std::fs::File::open("/dev/null") {
                Ok(f) => fillers.push(f),
                Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
                Err(e) => panic!("filling the descriptor table: {e}"),
            }
            assert!(fillers.len() <= 256, "the limit of 256 was not applied");
        }
        FullTable { fillers, saved }
    }
}

impl Drop for FullTable {
    fn drop(&mut self) {
        self.fillers.clear();
        set_nofile_limit(&self.saved);
    }
}

fn nofile_limit() -> libc::rlimit {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for the call to fill in.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    lim
}

fn set_nofile_limit(lim: &libc::rlimit) {
    // SAFETY: `lim` is a valid rlimit; lowering the soft limit needs no privilege.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, lim) }, 0);
}
