//! GSSAPI from the system's MIT Kerberos, loaded with dlopen(3) on first use.
//!
//! Linking libgssapi_krb5 at build time would map it, libkrb5, libk5crypto and their
//! dependencies into every run, and would need the krb5 development headers to build. Only a
//! run that authenticates with Negotiate pays for them here: the first call loads
//! `libgssapi_krb5.so.2`, and a machine without it gets a clear error at that point and not
//! before. The handful of functions used are declared below with the ABI of MIT's
//! `<gssapi/gssapi.h>` (RFC 2744 §3 C bindings); the OIDs are static data, not `dlsym`ed.
//!
//! In the static-PIE build (glibc Linux, see .cargo/config.toml) this goes through glibc's static
//! dlopen: the library and the shared libc it depends on are mapped beside the static one, which
//! works when both are the same glibc, as for the NSS modules.
//!
//! The safe surface: [`ticket`] (is there a usable Kerberos ticket, and whose), [`default_realm`],
//! and [`Context`], one security context stepped token by token.

use std::fmt;

/// What went wrong, coarsely enough for the auth layer to say what to do about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The library could not be loaded, or this platform has no GSSAPI binding.
    Unavailable,
    /// No credential cache, or no ticket-granting ticket in it.
    NoTicket,
    /// The ticket in the cache has expired.
    Expired,
    /// The KDC does not know the service principal asked for.
    UnknownService,
    /// The clocks of this machine and the KDC or proxy differ by more than Kerberos allows.
    ClockSkew,
    /// No KDC for the realm could be found or reached.
    KdcUnreachable,
    /// The peer's token was not valid.
    BadToken,
    Other,
}

/// A GSSAPI failure: its class and the library's own words (never a bare status number).
#[derive(Clone, Debug)]
pub struct Error {
    pub problem: Problem,
    pub text: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for Error {}

/// One step of a security context: the token to send (maybe empty), and whether the context
/// is established.
#[derive(Debug)]
pub struct Step {
    pub token: Vec<u8>,
    pub complete: bool,
}

/// The default credential's owner and how long it stays valid.
#[derive(Clone, Debug)]
pub struct Ticket {
    pub principal: String,
    pub lifetime_secs: u32,
}

/// How a target name is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameKind {
    /// `service@host` (GSS_C_NT_HOSTBASED_SERVICE, RFC 2743 §4.1).
    HostBased,
    /// A Kerberos principal, `service/host[@REALM]` (GSS_KRB5_NT_PRINCIPAL_NAME).
    Principal,
}

#[cfg(all(unix, not(target_vendor = "apple")))]
pub use imp::{Context, default_realm, ticket};

#[cfg(not(all(unix, not(target_vendor = "apple"))))]
pub use unsupported::{Context, default_realm, ticket};

/// Platforms without MIT krb5's ABI (Windows would use SSPI, macOS ships Heimdal's GSS
/// framework with packed structs): every call says so instead of pretending.
#[cfg(not(all(unix, not(target_vendor = "apple"))))]
mod unsupported {
    use super::{Error, NameKind, Problem, Step, Ticket};

    fn unavailable() -> Error {
        Error {
            problem: Problem::Unavailable,
            text:
                "Negotiate needs GSSAPI (MIT krb5), which gimlet does not support on this platform"
                    .into(),
        }
    }

    pub struct Context(());

    impl Context {
        pub fn new(_name: &str, _kind: NameKind) -> Result<Context, Error> {
            Err(unavailable())
        }

        pub fn step(&mut self, _input: Option<&[u8]>) -> Result<Step, Error> {
            Err(unavailable())
        }
    }

    pub fn ticket() -> Result<Ticket, Error> {
        Err(unavailable())
    }

    pub fn default_realm() -> Option<String> {
        None
    }
}

#[cfg(all(unix, not(target_vendor = "apple")))]
mod imp {
    use std::ffi::{CStr, c_char, c_int, c_void};
    use std::ptr;
    use std::sync::OnceLock;

    use super::{Error, NameKind, Problem, Step, Ticket};

    const LIBRARY: &CStr = c"libgssapi_krb5.so.2";
    /// Already mapped as a dependency of LIBRARY; opened again only for the default realm.
    const KRB5_LIBRARY: &CStr = c"libkrb5.so.3";

    type OmUint32 = u32;

    /// `gss_OID_desc`.
    #[repr(C)]
    struct Oid {
        length: OmUint32,
        elements: *const c_void,
    }

    // SAFETY: an Oid only ever points at the static byte strings below, never written.
    unsafe impl Sync for Oid {}

    /// `gss_buffer_desc`.
    #[repr(C)]
    struct Buffer {
        length: usize,
        value: *mut c_void,
    }

    impl Buffer {
        const EMPTY: Buffer = Buffer {
            length: 0,
            value: ptr::null_mut(),
        };
    }

    /// `gss_OID_set_desc`.
    #[repr(C)]
    struct OidSet {
        count: usize,
        elements: *const Oid,
    }

    type Name = *mut c_void;
    type Cred = *mut c_void;
    type Ctx = *mut c_void;

    const fn oid(bytes: &'static [u8]) -> Oid {
        Oid {
            length: bytes.len() as OmUint32,
            elements: bytes.as_ptr().cast(),
        }
    }

    /// 1.2.840.113554.1.2.1.4, RFC 2744 §4.
    static NT_HOSTBASED_SERVICE: Oid = oid(b"\x2a\x86\x48\x86\xf7\x12\x01\x02\x01\x04");
    /// 1.2.840.113554.1.2.2.1, RFC 1964 §2.1.1.
    static NT_KRB5_PRINCIPAL: Oid = oid(b"\x2a\x86\x48\x86\xf7\x12\x01\x02\x02\x01");
    /// 1.2.840.113554.1.2.2, the Kerberos V5 mechanism (RFC 1964).
    static MECH_KRB5: Oid = oid(b"\x2a\x86\x48\x86\xf7\x12\x01\x02\x02");
    /// 1.3.6.1.5.5.2, SPNEGO (RFC 4178), what `Negotiate` carries (RFC 4559).
    static MECH_SPNEGO: Oid = oid(b"\x2b\x06\x01\x05\x05\x02");

    const GSS_C_GSS_CODE: c_int = 1;
    const GSS_C_MECH_CODE: c_int = 2;
    const GSS_C_INITIATE: c_int = 1;
    const GSS_C_INDEFINITE: OmUint32 = 0xffff_ffff;
    const GSS_C_MUTUAL_FLAG: OmUint32 = 2;
    const GSS_S_CONTINUE_NEEDED: OmUint32 = 1;
    /// Calling and routine error bits (RFC 2744 §3.9.1); the low 16 bits are informational.
    const GSS_ERROR_MASK: OmUint32 = 0xffff_0000;
    const GSS_S_DEFECTIVE_TOKEN: OmUint32 = 9 << 16;
    const GSS_S_NO_CRED: OmUint32 = 7 << 16;
    const GSS_S_CREDENTIALS_EXPIRED: OmUint32 = 11 << 16;

    /// krb5 error codes (com_err table "krb5", base -1765328384), as minor statuses.
    const KRB5KDC_ERR_S_PRINCIPAL_UNKNOWN: i32 = -1765328377;
    const KRB5KRB_AP_ERR_TKT_EXPIRED: i32 = -1765328352;
    const KRB5KRB_AP_ERR_SKEW: i32 = -1765328347;
    const KRB5_CC_NOTFOUND: i32 = -1765328243;
    const KRB5_REALM_UNKNOWN: i32 = -1765328230;
    const KRB5_KDC_UNREACH: i32 = -1765328228;
    const KRB5_FCC_NOFILE: i32 = -1765328189;

    type ImportName =
        unsafe extern "C" fn(*mut OmUint32, *const Buffer, *const Oid, *mut Name) -> OmUint32;
    type InitSecContext = unsafe extern "C" fn(
        *mut OmUint32,
        Cred,
        *mut Ctx,
        Name,
        *const Oid,
        OmUint32,
        OmUint32,
        *const c_void,
        *const Buffer,
        *mut *const Oid,
        *mut Buffer,
        *mut OmUint32,
        *mut OmUint32,
    ) -> OmUint32;
    type ReleaseBuffer = unsafe extern "C" fn(*mut OmUint32, *mut Buffer) -> OmUint32;
    type ReleaseName = unsafe extern "C" fn(*mut OmUint32, *mut Name) -> OmUint32;
    type DeleteSecContext = unsafe extern "C" fn(*mut OmUint32, *mut Ctx, *mut Buffer) -> OmUint32;
    type DisplayStatus = unsafe extern "C" fn(
        *mut OmUint32,
        OmUint32,
        c_int,
        *const Oid,
        *mut OmUint32,
        *mut Buffer,
    ) -> OmUint32;
    type AcquireCred = unsafe extern "C" fn(
        *mut OmUint32,
        Name,
        OmUint32,
        *const OidSet,
        c_int,
        *mut Cred,
        *mut *mut c_void,
        *mut OmUint32,
    ) -> OmUint32;
    type InquireCred = unsafe extern "C" fn(
        *mut OmUint32,
        Cred,
        *mut Name,
        *mut OmUint32,
        *mut c_int,
        *mut *mut c_void,
    ) -> OmUint32;
    type ReleaseCred = unsafe extern "C" fn(*mut OmUint32, *mut Cred) -> OmUint32;
    type DisplayName =
        unsafe extern "C" fn(*mut OmUint32, Name, *mut Buffer, *mut *const Oid) -> OmUint32;
    type Krb5InitContext = unsafe extern "C" fn(*mut *mut c_void) -> i32;
    type Krb5GetDefaultRealm = unsafe extern "C" fn(*mut c_void, *mut *mut c_char) -> i32;
    type Krb5FreeDefaultRealm = unsafe extern "C" fn(*mut c_void, *mut c_char);
    type Krb5FreeContext = unsafe extern "C" fn(*mut c_void);

    /// The functions, resolved once. The library stays loaded for the life of the process:
    /// unloading Kerberos libraries is not something they are written to survive.
    struct Lib {
        import_name: ImportName,
        init_sec_context: InitSecContext,
        release_buffer: ReleaseBuffer,
        release_name: ReleaseName,
        delete_sec_context: DeleteSecContext,
        display_status: DisplayStatus,
        acquire_cred: AcquireCred,
        inquire_cred: InquireCred,
        release_cred: ReleaseCred,
        display_name: DisplayName,
    }

    static LIB: OnceLock<Result<Lib, String>> = OnceLock::new();

    fn dlerror() -> String {
        // SAFETY: dlerror returns NULL or a NUL-terminated string valid until the next dl*
        // call on this thread; it is copied at once.
        let message = unsafe { libc::dlerror() };
        if message.is_null() {
            "unknown error".into()
        } else {
            // SAFETY: non-null, NUL-terminated (above).
            unsafe { CStr::from_ptr(message) }
                .to_string_lossy()
                .into_owned()
        }
    }

    fn open(name: &CStr) -> Result<*mut c_void, String> {
        // SAFETY: name is NUL-terminated; RTLD_LOCAL keeps its symbols out of the global
        // namespace. Loading runs the library's constructors, which is what loading is for.
        let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            Err(dlerror())
        } else {
            Ok(handle)
        }
    }

    /// Resolves `name` in `handle` as a function of type `F`.
    ///
    /// # Safety
    /// `F` must be an `extern "C"` function pointer type matching the symbol's C prototype.
    unsafe fn symbol<F: Copy>(handle: *mut c_void, name: &CStr) -> Result<F, String> {
        // SAFETY: handle came from dlopen and is never closed; name is NUL-terminated.
        let address = unsafe { libc::dlsym(handle, name.as_ptr()) };
        if address.is_null() {
            return Err(format!(
                "{} has no {}",
                LIBRARY.to_string_lossy(),
                name.to_string_lossy()
            ));
        }
        debug_assert_eq!(size_of::<F>(), size_of::<*mut c_void>());
        // SAFETY: a function pointer has the size of a data pointer on every platform this
        // module builds for, and the caller vouches for the type.
        Ok(unsafe { std::mem::transmute_copy::<*mut c_void, F>(&address) })
    }

    /// In the static-PIE build the libc that libkrb5 uses is the shared one static dlopen
    /// mapped beside ours, and that libc sets up its per-thread locale tables (`isspace` and
    /// friends read them) only for the thread that loaded it: threads the static libc starts
    /// later (listen mode's handshake workers) have them unset, and libkrb5 crashed there
    /// (SIGSEGV reading the ctype table). glibc's own `__ctype_init` sets them for the calling
    /// thread; it is run once per thread before its first GSSAPI call. The interop suite's `-D`
    /// check sets up eight Negotiate tunnels at once to catch this again.
    fn thread_setup() {
        if !cfg!(target_feature = "crt-static") {
            return;
        }
        thread_local!(static DONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
        if DONE.with(|d| d.replace(true)) {
            return;
        }
        // SAFETY: RTLD_NOLOAD only looks up the libc already mapped (by loading GSSAPI); the
        // handle is never closed.
        let libc_so =
            unsafe { libc::dlopen(c"libc.so.6".as_ptr(), libc::RTLD_LAZY | libc::RTLD_NOLOAD) };
        if libc_so.is_null() {
            return;
        }
        // SAFETY: handle from dlopen above; the name is NUL-terminated.
        let init = unsafe { libc::dlsym(libc_so, c"__ctype_init".as_ptr()) };
        if !init.is_null() {
            // SAFETY: `void __ctype_init(void)` in glibc; it only stores this thread's
            // locale table pointers.
            let init: extern "C" fn() = unsafe { std::mem::transmute(init) };
            init();
        }
    }

    fn lib() -> Result<&'static Lib, Error> {
        let lib = lib_loaded();
        thread_setup();
        lib
    }

    fn lib_loaded() -> Result<&'static Lib, Error> {
        LIB.get_or_init(|| {
            let handle =
                open(LIBRARY).map_err(|e| format!("loading {}: {e}", LIBRARY.to_string_lossy()))?;
            // SAFETY: each type alias above transcribes the prototype in MIT's gssapi.h.
            unsafe {
                Ok(Lib {
                    import_name: symbol(handle, c"gss_import_name")?,
                    init_sec_context: symbol(handle, c"gss_init_sec_context")?,
                    release_buffer: symbol(handle, c"gss_release_buffer")?,
                    release_name: symbol(handle, c"gss_release_name")?,
                    delete_sec_context: symbol(handle, c"gss_delete_sec_context")?,
                    display_status: symbol(handle, c"gss_display_status")?,
                    acquire_cred: symbol(handle, c"gss_acquire_cred")?,
                    inquire_cred: symbol(handle, c"gss_inquire_cred")?,
                    release_cred: symbol(handle, c"gss_release_cred")?,
                    display_name: symbol(handle, c"gss_display_name")?,
                })
            }
        })
        .as_ref()
        .map_err(|why| Error {
            problem: Problem::Unavailable,
            text: format!(
                "Negotiate needs GSSAPI from MIT Kerberos (Debian: libgssapi-krb5-2): {why}"
            ),
        })
    }

    impl Lib {
        /// Copies a buffer the library allocated and gives it back.
        fn take(&self, buffer: &mut Buffer) -> Vec<u8> {
            let bytes = if buffer.value.is_null() || buffer.length == 0 {
                Vec::new()
            } else {
                // SAFETY: the library filled `buffer` with `length` readable bytes at `value`.
                unsafe { std::slice::from_raw_parts(buffer.value.cast::<u8>(), buffer.length) }
                    .to_vec()
            };
            let mut minor = 0;
            // SAFETY: buffer was filled by this library; releasing empties it.
            unsafe { (self.release_buffer)(&mut minor, buffer) };
            bytes
        }

        fn text(&self, buffer: &mut Buffer) -> String {
            let bytes = self.take(buffer);
            String::from_utf8_lossy(&bytes)
                .trim_end_matches('\0')
                .to_owned()
        }

        /// The library's messages for one status value, joined.
        fn display(&self, status: OmUint32, kind: c_int, mech: *const Oid) -> String {
            let mut out: Vec<String> = Vec::new();
            let mut more: OmUint32 = 0;
            // Bounded: a library that keeps saying "more" does not hold us forever.
            for _ in 0..8 {
                let (mut minor, mut buffer) = (0, Buffer::EMPTY);
                // SAFETY: every pointer is valid for the call; buffer is released by text().
                let major = unsafe {
                    (self.display_status)(&mut minor, status, kind, mech, &mut more, &mut buffer)
                };
                if major & GSS_ERROR_MASK != 0 {
                    break;
                }
                let text = self.text(&mut buffer);
                if !text.is_empty() {
                    out.push(text);
                }
                if more == 0 {
                    break;
                }
            }
            out.join("; ")
        }

        /// An error from a major and minor status, classified, in the library's words.
        fn error(&self, major: OmUint32, minor: OmUint32, mech: *const Oid) -> Error {
            let code = minor as i32;
            let routine = major & 0x00ff_0000;
            let problem = match code {
                KRB5_CC_NOTFOUND | KRB5_FCC_NOFILE => Problem::NoTicket,
                KRB5KRB_AP_ERR_TKT_EXPIRED => Problem::Expired,
                KRB5KDC_ERR_S_PRINCIPAL_UNKNOWN => Problem::UnknownService,
                KRB5KRB_AP_ERR_SKEW => Problem::ClockSkew,
                KRB5_KDC_UNREACH | KRB5_REALM_UNKNOWN => Problem::KdcUnreachable,
                _ if routine == GSS_S_CREDENTIALS_EXPIRED => Problem::Expired,
                _ if routine == GSS_S_NO_CRED => Problem::NoTicket,
                _ if routine == GSS_S_DEFECTIVE_TOKEN => Problem::BadToken,
                _ => Problem::Other,
            };
            let mechanism = match minor {
                0 => String::new(),
                _ => self.display(minor, GSS_C_MECH_CODE, mech),
            };
            let general = self.display(major, GSS_C_GSS_CODE, ptr::null());
            // The mechanism's words are the specific ones ("Server not found in Kerberos
            // database"); the general ones ("Unspecified GSS failure") only when there are none.
            let text = match (general.is_empty(), mechanism.is_empty()) {
                (_, false) => mechanism,
                (false, true) => general,
                (true, true) => format!("GSSAPI failure (major {major:#x}, minor {code})"),
            };
            Error { problem, text }
        }
    }

    /// The default Kerberos credential (the ticket `kinit` left in the cache `KRB5CCNAME`
    /// names): its principal and remaining lifetime. Read afresh on each call: a `kinit`
    /// after gimlet started counts.
    pub fn ticket() -> Result<Ticket, Error> {
        let lib = lib()?;
        let mechs = OidSet {
            count: 1,
            elements: &MECH_KRB5,
        };
        let (mut minor, mut cred, mut lifetime): (OmUint32, Cred, OmUint32) =
            (0, ptr::null_mut(), 0);
        // SAFETY: out-pointers are valid; a null name asks for the default principal; the
        // actual-mechs out-parameter is optional (null).
        let major = unsafe {
            (lib.acquire_cred)(
                &mut minor,
                ptr::null_mut(),
                GSS_C_INDEFINITE,
                &mechs,
                GSS_C_INITIATE,
                &mut cred,
                ptr::null_mut(),
                &mut lifetime,
            )
        };
        if major & GSS_ERROR_MASK != 0 {
            return Err(lib.error(major, minor, &MECH_KRB5));
        }
        if lifetime == 0 {
            // MIT hands out an expired credential here and refuses only when asked about it.
            // SAFETY: cred was just acquired and is released once.
            unsafe { (lib.release_cred)(&mut minor, &mut cred) };
            return Err(Error {
                problem: Problem::Expired,
                text: String::new(),
            });
        }
        let mut name: Name = ptr::null_mut();
        // SAFETY: cred was just acquired; usage and mechanisms are optional (null).
        let major = unsafe {
            (lib.inquire_cred)(
                &mut minor,
                cred,
                &mut name,
                &mut lifetime,
                ptr::null_mut(),
                ptr::null_mut(),
            )
        };
        let result = if major & GSS_ERROR_MASK != 0 {
            Err(lib.error(major, minor, &MECH_KRB5))
        } else {
            let mut buffer = Buffer::EMPTY;
            // SAFETY: name came from inquire_cred; the name type out-parameter is optional.
            let major =
                unsafe { (lib.display_name)(&mut minor, name, &mut buffer, ptr::null_mut()) };
            let principal = if major & GSS_ERROR_MASK != 0 {
                String::new()
            } else {
                lib.text(&mut buffer)
            };
            // SAFETY: name came from inquire_cred (null is accepted too).
            unsafe { (lib.release_name)(&mut minor, &mut name) };
            Ok(Ticket {
                principal,
                lifetime_secs: lifetime,
            })
        };
        // SAFETY: cred came from acquire_cred and is released once.
        unsafe { (lib.release_cred)(&mut minor, &mut cred) };
        result
    }

    /// The default realm of the Kerberos configuration, for messages.
    pub fn default_realm() -> Option<String> {
        lib().ok()?;
        let handle = open(KRB5_LIBRARY).ok()?;
        // SAFETY: the aliases transcribe krb5.h's prototypes.
        let (init, get, free_realm, free_context) = unsafe {
            (
                symbol::<Krb5InitContext>(handle, c"krb5_init_context").ok()?,
                symbol::<Krb5GetDefaultRealm>(handle, c"krb5_get_default_realm").ok()?,
                symbol::<Krb5FreeDefaultRealm>(handle, c"krb5_free_default_realm").ok()?,
                symbol::<Krb5FreeContext>(handle, c"krb5_free_context").ok()?,
            )
        };
        let mut context = ptr::null_mut();
        // SAFETY: context is an out-pointer, freed below when set.
        if unsafe { init(&mut context) } != 0 {
            return None;
        }
        let mut realm: *mut c_char = ptr::null_mut();
        // SAFETY: context is initialised; realm is an out-pointer freed below when set.
        let found = unsafe { get(context, &mut realm) } == 0 && !realm.is_null();
        let out = found.then(|| {
            // SAFETY: krb5 returned a NUL-terminated string.
            let text = unsafe { CStr::from_ptr(realm) }
                .to_string_lossy()
                .into_owned();
            // SAFETY: realm came from krb5_get_default_realm on this context.
            unsafe { free_realm(context, realm) };
            text
        });
        // SAFETY: context came from krb5_init_context and is freed once.
        unsafe { free_context(context) };
        out
    }

    /// One SPNEGO security context towards a service, from the default credential.
    pub struct Context {
        lib: &'static Lib,
        name: Name,
        ctx: Ctx,
        complete: bool,
    }

    // SAFETY: the handles are owned by this value alone and MIT's GSSAPI lets a context be
    // used from any thread as long as calls on it do not overlap, which `&mut self` ensures.
    unsafe impl Send for Context {}

    impl Context {
        /// Imports the target name; no traffic yet.
        pub fn new(target: &str, kind: NameKind) -> Result<Context, Error> {
            let lib = lib()?;
            let name_type = match kind {
                NameKind::HostBased => &NT_HOSTBASED_SERVICE,
                NameKind::Principal => &NT_KRB5_PRINCIPAL,
            };
            let input = Buffer {
                length: target.len(),
                value: target.as_ptr().cast_mut().cast(),
            };
            let (mut minor, mut name): (OmUint32, Name) = (0, ptr::null_mut());
            // SAFETY: input points at `target` for the call (the library copies it and
            // never writes through it); name is an out-pointer released in Drop.
            let major = unsafe { (lib.import_name)(&mut minor, &input, name_type, &mut name) };
            if major & GSS_ERROR_MASK != 0 {
                return Err(lib.error(major, minor, ptr::null()));
            }
            Ok(Context {
                lib,
                name,
                ctx: ptr::null_mut(),
                complete: false,
            })
        }

        /// Feeds the peer's token (`None` for the first call) and returns ours.
        pub fn step(&mut self, input: Option<&[u8]>) -> Result<Step, Error> {
            // A context may be stepped or dropped on another thread than the one that made it
            // (a kept -D connection served by the next free worker).
            thread_setup();
            let lib = self.lib;
            let input = input.map(|bytes| Buffer {
                length: bytes.len(),
                value: bytes.as_ptr().cast_mut().cast(),
            });
            let input_ptr = input.as_ref().map_or(ptr::null(), |b| b as *const Buffer);
            let (mut minor, mut output, mut flags) = (0, Buffer::EMPTY, 0);
            // SAFETY: ctx starts null and is then only what the library put there; name is
            // the imported target; input (if any) borrows the caller's slice for the call;
            // output is released by take(); bindings, actual mech and time are optional.
            let major = unsafe {
                (lib.init_sec_context)(
                    &mut minor,
                    ptr::null_mut(),
                    &mut self.ctx,
                    self.name,
                    &MECH_SPNEGO,
                    GSS_C_MUTUAL_FLAG,
                    0,
                    ptr::null(),
                    input_ptr,
                    ptr::null_mut(),
                    &mut output,
                    &mut flags,
                    ptr::null_mut(),
                )
            };
            let token = lib.take(&mut output);
            if major & GSS_ERROR_MASK != 0 {
                let error = lib.error(major, minor, ptr::null());
                if input.is_none() && error.problem == Problem::Other {
                    return Err(self.diagnose().unwrap_or(error));
                }
                return Err(error);
            }
            self.complete = major & GSS_S_CONTINUE_NEEDED == 0;
            Ok(Step {
                token,
                complete: self.complete,
            })
        }
    }

    impl Context {
        /// SPNEGO replaces Kerberos's error codes with numbers of its own making, leaving
        /// only translated text. When the first step fails, the same step with the Kerberos
        /// mechanism alone says which error it was (no ticket, unknown service, clock skew).
        fn diagnose(&self) -> Option<Error> {
            let lib = self.lib;
            let (mut minor, mut ctx, mut output, mut flags): (OmUint32, Ctx, Buffer, OmUint32) =
                (0, ptr::null_mut(), Buffer::EMPTY, 0);
            // SAFETY: as in step(), with a context of its own deleted below.
            let major = unsafe {
                (lib.init_sec_context)(
                    &mut minor,
                    ptr::null_mut(),
                    &mut ctx,
                    self.name,
                    &MECH_KRB5,
                    GSS_C_MUTUAL_FLAG,
                    0,
                    ptr::null(),
                    ptr::null(),
                    ptr::null_mut(),
                    &mut output,
                    &mut flags,
                    ptr::null_mut(),
                )
            };
            lib.take(&mut output);
            if !ctx.is_null() {
                let mut ignored = 0;
                // SAFETY: ctx was made by the call above and is deleted once.
                unsafe { (lib.delete_sec_context)(&mut ignored, &mut ctx, ptr::null_mut()) };
            }
            let error =
                (major & GSS_ERROR_MASK != 0).then(|| lib.error(major, minor, &MECH_KRB5))?;
            (error.problem != Problem::Other).then_some(error)
        }
    }

    impl Drop for Context {
        fn drop(&mut self) {
            thread_setup();
            let mut minor = 0;
            if !self.ctx.is_null() {
                // SAFETY: the context is this value's own; its output token is not wanted.
                unsafe {
                    (self.lib.delete_sec_context)(&mut minor, &mut self.ctx, ptr::null_mut())
                };
            }
            // SAFETY: the name is this value's own, imported in new().
            unsafe { (self.lib.release_name)(&mut minor, &mut self.name) };
        }
    }
}
