//! libnftables in this process: the library the `nft` program is built on, opened at run time
//! (`libnftables.so.1`, installed with nftables), so that a transaction does not start a
//! process.
//!
//! What that saves is mostly not the start: when an `nft` process exits, closing its netlink
//! socket waits for `nf_tables` to free the transaction it just committed, which first waits for
//! an RCU grace period (10-20 ms on a busy node, most of a small partial sync). One context
//! kept open keeps its socket, so nothing waits. The socket belongs to the network namespace
//! the context was opened in.
//!
//! The text is the same as `nft -f` reads, and errors are nft's own messages.

use std::{
    ffi::{CStr, CString, c_char, c_int, c_void},
    fmt,
    io::Write as _,
    os::fd::FromRawFd as _,
};

/// `struct nft_ctx *`.
type Ctx = *mut c_void;

/// The entry points used, from `<nftables/libnftables.h>` (stable since libnftables 0.9).
struct Api {
    ctx_new: unsafe extern "C" fn(u32) -> Ctx,
    ctx_free: unsafe extern "C" fn(Ctx),
    buffer_output: unsafe extern "C" fn(Ctx) -> c_int,
    buffer_error: unsafe extern "C" fn(Ctx) -> c_int,
    get_output_buffer: unsafe extern "C" fn(Ctx) -> *const c_char,
    get_error_buffer: unsafe extern "C" fn(Ctx) -> *const c_char,
    set_dry_run: unsafe extern "C" fn(Ctx, bool),
    run_cmd_from_filename: unsafe extern "C" fn(Ctx, *const c_char) -> c_int,
}

/// An open libnftables context.
pub struct Libnftables {
    handle: *mut c_void,
    ctx: Ctx,
    api: Api,
}

// SAFETY: a context is plain heap state and a socket, with no tie to the thread that made
// it; `&mut self` on every call keeps it to one thread at a time.
unsafe impl Send for Libnftables {}

impl fmt::Debug for Libnftables {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Libnftables")
    }
}

/// The shared object's name: the runtime package's, so no development package is needed.
const LIBRARY: &CStr = c"libnftables.so.1";

fn dl_error() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string valid until the next dl call.
    let message = unsafe { libc::dlerror() };
    if message.is_null() {
        "unknown error".to_owned()
    } else {
        // SAFETY: non-NULL, NUL-terminated (above).
        unsafe { CStr::from_ptr(message) }
            .to_string_lossy()
            .into_owned()
    }
}

/// The function `name` of the library `handle`.
///
/// # Safety
/// `handle` is live, and `F` is a function pointer type matching the symbol's signature.
unsafe fn symbol<F: Copy>(handle: *mut c_void, name: &CStr) -> Result<F, String> {
    assert_eq!(
        size_of::<F>(),
        size_of::<*mut c_void>(),
        "a function pointer"
    );
    // SAFETY: a live handle and a NUL-terminated name.
    let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
    if p.is_null() {
        return Err(format!("{}: {}", name.to_string_lossy(), dl_error()));
    }
    // SAFETY: the caller vouches for `F`; sizes checked above.
    Ok(unsafe { std::mem::transmute_copy::<*mut c_void, F>(&p) })
}

impl Libnftables {
    /// Opens the library and a context; the error says why not (e.g. no such library).
    pub fn open() -> Result<Self, String> {
        // SAFETY: a NUL-terminated name; the library's initialisers have no preconditions.
        let handle = unsafe { libc::dlopen(LIBRARY.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            return Err(dl_error());
        }
        let api = (|| {
            // SAFETY: each type is the symbol's C signature (libnftables.h).
            unsafe {
                Ok::<_, String>(Api {
                    ctx_new: symbol(handle, c"nft_ctx_new")?,
                    ctx_free: symbol(handle, c"nft_ctx_free")?,
                    buffer_output: symbol(handle, c"nft_ctx_buffer_output")?,
                    buffer_error: symbol(handle, c"nft_ctx_buffer_error")?,
                    get_output_buffer: symbol(handle, c"nft_ctx_get_output_buffer")?,
                    get_error_buffer: symbol(handle, c"nft_ctx_get_error_buffer")?,
                    set_dry_run: symbol(handle, c"nft_ctx_set_dry_run")?,
                    run_cmd_from_filename: symbol(handle, c"nft_run_cmd_from_filename")?,
                })
            }
        })();
        let api = match api {
            Ok(api) => api,
            Err(e) => {
                // SAFETY: the handle dlopen returned, closed once.
                unsafe { libc::dlclose(handle) };
                return Err(e);
            }
        };
        // SAFETY: NFT_CTX_DEFAULT (0) opens the netlink socket.
        let ctx = unsafe { (api.ctx_new)(0) };
        if ctx.is_null() {
            // SAFETY: as above.
            unsafe { libc::dlclose(handle) };
            return Err("nft_ctx_new failed".to_owned());
        }
        // SAFETY: a live context; buffering makes messages readable instead of printed.
        unsafe {
            (api.buffer_output)(ctx);
            (api.buffer_error)(ctx);
        }
        Ok(Self { handle, ctx, api })
    }

    /// Runs `text` as `nft -f` would (with `dry_run`, as `nft --check -f`): its output, or
    /// nft's error messages.
    ///
    /// The text goes through a memory file rather than libnftables' buffer input, whose
    /// error messages (1.0.6) quote the first line of the text instead of the failing one.
    pub fn run(&mut self, text: &str, dry_run: bool) -> Result<String, String> {
        // SAFETY: a NUL-terminated name; the flags are valid.
        let fd = unsafe { libc::memfd_create(c"hybrid-proxy-nft".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: a new descriptor this function owns; the file closes it.
        let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
        file.write_all(text.as_bytes())
            .map_err(|e| format!("writing the transaction: {e}"))?;
        let path = CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL in a path");
        // SAFETY: a live context and a NUL-terminated path that outlives the call; the
        // buffers read after it are NUL-terminated and valid until the next call on the
        // context, and are copied before that.
        unsafe {
            (self.api.set_dry_run)(self.ctx, dry_run);
            let rc = (self.api.run_cmd_from_filename)(self.ctx, path.as_ptr());
            let read = |p: *const c_char| {
                if p.is_null() {
                    String::new()
                } else {
                    CStr::from_ptr(p).to_string_lossy().into_owned()
                }
            };
            let output = read((self.api.get_output_buffer)(self.ctx));
            let errors = read((self.api.get_error_buffer)(self.ctx));
            if rc == 0 { Ok(output) } else { Err(errors) }
        }
    }
}

impl Drop for Libnftables {
    fn drop(&mut self) {
        // SAFETY: the context and handle this value owns, freed once.
        unsafe {
            (self.api.ctx_free)(self.ctx);
            libc::dlclose(self.handle);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs nftables installed (the library comes with it), not privileges: dry runs of an
    /// invalid and a valid command.
    #[test]
    fn a_dry_run_accepts_valid_text_and_returns_nfts_message_for_invalid() {
        let mut lib = Libnftables::open().unwrap_or_else(|e| {
            panic!("libnftables.so.1: {e}: install nftables (`cargo xtask test` does)")
        });
        let invalid = lib.run("add tabel ip hybrid-proxy-test\n", true);
        assert!(
            matches!(&invalid, Err(message) if message.contains("syntax error")),
            "{invalid:?}"
        );
        // A dry run still needs CAP_NET_ADMIN for the cache; without it nft says so.
        match lib.run("add table ip hybrid-proxy-test\n", true) {
            Ok(_) => {}
            Err(message) => assert!(message.contains("Operation not permitted"), "{message}"),
        }
    }
}
