//! `gimlet --generate KIND`: the man page and the shell completion scripts, printed from the
//! binary so that `cargo install` users get them (ripgrep's convention). Only this flag reaches
//! this module: the man page's extra sections are built here, on demand, never at start-up.
//! The checked-in `man/gimlet.1` and `completions/` are this output (a test compares them).

use std::io::{self, Write};

use clap::CommandFactory;
use clap_complete::Shell;
use roff::{Roff, bold, roman};

use crate::cli::{self, Cli};
use crate::error::EXIT_CODES;

/// Prints what `--generate kind` asks for (clap has refused unknown kinds already).
pub fn generate(kind: &str, out: &mut impl Write) -> io::Result<()> {
    let shell = match kind {
        "man" => return out.write_all(&man_page()?),
        "complete-bash" => Shell::Bash,
        "complete-zsh" => Shell::Zsh,
        "complete-fish" => Shell::Fish,
        _ => return Err(io::Error::new(io::ErrorKind::InvalidInput, "unknown kind")),
    };
    clap_complete::generate(shell, &mut Cli::command(), "gimlet", out);
    Ok(())
}

fn section(page: &mut Vec<u8>, title: &str, body: impl FnOnce(&mut Roff)) -> io::Result<()> {
    let mut roff = Roff::new();
    roff.control("SH", [title]);
    body(&mut roff);
    roff.to_writer(page)
}

fn paragraph(roff: &mut Roff, tag: &str, text: &str) {
    roff.control("TP", []).text([bold(tag)]).text([roman(text)]);
}

/// The man page: clap's sections plus EXIT STATUS, ENVIRONMENT, RELAY and EXAMPLES.
fn man_page() -> io::Result<Vec<u8>> {
    let man = clap_mangen::Man::new(Cli::command());
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    section(&mut page, "ARGUMENTS", |r| {
        for &(what, meaning) in cli::ARGUMENTS {
            paragraph(r, what, meaning);
        }
    })?;
    man.render_options_section(&mut page)?;
    section(&mut page, "EXIT STATUS", |r| {
        for (code, meaning) in EXIT_CODES {
            paragraph(r, &code.to_string(), meaning);
        }
    })?;
    section(&mut page, "ENVIRONMENT", |r| {
        paragraph(
            r,
            "GIMLET_PROXY_AUTH",
            "Proxy credentials as user:password (the password may contain ':'), used when neither \
             the proxy URL, -U nor an auth file gives any. Keeps the password off the command line.",
        );
        paragraph(
            r,
            "GIMLET_ASKPASS",
            "A program to ask for missing credentials, before the terminal: it is run with the \
             prompt as its argument and its first line of output is the answer.",
        );
        paragraph(
            r,
            "SSH_ASKPASS",
            "Used like GIMLET_ASKPASS when there is no terminal to prompt on.",
        );
        paragraph(r, "HOME", "Where --netrc finds .netrc.");
        paragraph(
            r,
            "GIMLET_NO_SPLICE",
            "When set to anything but 0, relay by copying through a buffer instead of splice(2), \
             for troubleshooting.",
        );
    })?;
    section(&mut page, "CREDENTIALS", |r| {
        r.control("PP", []).text([roman(
            "Sources, first present wins: the proxy URL's userinfo, -U, --proxy-auth-file or \
             AUTHFILE, GIMLET_PROXY_AUTH, the netrc entry for the proxy host (with --netrc or \
             --netrc-file), then, when the proxy asks, GIMLET_ASKPASS, the terminal, or \
             SSH_ASKPASS. Files of secrets must not be accessible by group or others, except \
             corkscrew's AUTHFILE argument, which is read with a warning (as corkscrew reads \
             it).",
        )]);
        r.control("PP", []).text([roman(
            "By default the first request carries no credentials; after the proxy's 407 gimlet \
             answers with the strongest scheme offered: Negotiate (when there is a Kerberos \
             ticket), Digest (SHA-256, then MD5), NTLMv2, then Basic. --proxy-auth basic sends \
             Basic with the first request. Rejected credentials end the run with status 5; \
             gimlet never loops.",
        )]);
        r.control("PP", []).text([roman(
            "Negotiate uses the Kerberos ticket from the credential cache (kinit, KRB5CCNAME) \
             for the service HTTP@PROXYHOST, or the one --proxy-service-name names; MIT \
             Kerberos (libgssapi_krb5.so.2) is loaded only when a proxy asks for Negotiate. \
             With no ticket, an expired one, a service principal the KDC does not know or a \
             clock too far off, gimlet exits with status 5 and one line saying what to do, \
             e.g. \"no Kerberos ticket for CORP.EXAMPLE: run kinit\"; with --proxy-auth any it \
             first tries the next scheme offered when it has a password for it.",
        )]);
        r.control("PP", []).text([roman(
            "-v names the user and where the credentials came from (the proxy URL, -U, \
             --proxy-auth-file FILE, the AUTHFILE argument, GIMLET_PROXY_AUTH, a netrc file, an \
             askpass program or the terminal prompt) and the scheme that answered; the message \
             for rejected credentials names the source too. When the proxy asks for Basic, -v \
             hints that --proxy-auth basic saves the 407 round trip.",
        )]);
    })?;
    section(&mut page, "TLS", |r| {
        r.control("PP", []).text([roman(
            "An https:// proxy is reached over TLS (rustls, TLS 1.2 or 1.3): the CONNECT, the \
             credentials and the tunnel travel inside the session, and closing standard input \
             sends close_notify before the socket's sending half is shut. The proxy's \
             certificate is verified against the system's roots (or --proxy-cacert) for the \
             proxy's host name, sent as SNI (--proxy-servername overrides it; IP addresses are \
             checked against the certificate's IP addresses). --tls also speaks TLS to HOST \
             through the tunnel, TLS inside TLS with an https:// proxy. A verification failure \
             ends the run with status 8 and says why: expired, wrong name, unknown authority, \
             pinned key mismatch.",
        )]);
    })?;
    section(&mut page, "RELAY", |r| {
        r.control("PP", []).text([roman(
            "TCP urgent data (a byte sent with MSG_OOB) is not part of the stream: gimlet drops \
             it and delivers every other byte in order, as read(2) does without SO_OOBINLINE, \
             with or without splice(2).",
        )]);
        r.control("PP", []).text([roman(
            "While relaying, standard input and output are non-blocking. Their flags, and the \
             terminal's echo during a password prompt, are given back on every way out: at the \
             end, on an error, and on any signal that ends gimlet and can be caught (it then \
             dies of that signal). SIGTSTP, SIGTTIN and SIGTTOU give them back while gimlet is \
             stopped; SIGCONT takes them again. SIGSTOP and SIGKILL cannot be caught: under \
             SIGSTOP the flags stay set until SIGCONT. SIGPIPE is ignored; a vanished reader \
             ends the run with status 0.",
        )]);
    })?;
    section(&mut page, "EXAMPLES", |r| {
        for &(what, command) in cli::EXAMPLES {
            r.control("PP", []).text([roman(what)]);
            r.control("IP", [])
                .control("nf", [])
                .text([bold(command)])
                .control("fi", []);
        }
    })?;
    man.render_version_section(&mut page)?;
    Ok(page)
}
