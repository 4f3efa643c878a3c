complete -c gimlet -s p -l proxy -d 'Proxy to go through: host:port, [v6addr]:port or http[s]://[user[:password]@]host[:port] (userinfo percent-decoded; port 80 or 443 when a URL omits it). https:// speaks TLS to the proxy. A link-local proxy names its interface: [fe80::1%eth0]:3128 or http://[fe80::1%25eth0]:3128' -r
complete -c gimlet -s U -l proxy-user -d 'Proxy credentials; DOMAIN\\USER for NTLM. Without :PASSWORD, the password is asked for. Prefer --proxy-auth-file, GIMLET_PROXY_AUTH or --netrc: other users can read command lines' -r
complete -c gimlet -l proxy-auth-file -d 'Read credentials from FILE, corkscrew\'s format: user:password on the first line (the password may contain \':\'). The file must not be accessible by group or others' -r -F
complete -c gimlet -l proxy-auth -d 'Authentication scheme: any picks the strongest the proxy offers (Digest, then NTLM, then Basic) after its first 407; basic also sends credentials with the first request' -r -f -a "any\t''
basic\t''
digest\t''
ntlm\t''"
complete -c gimlet -l netrc-file -d 'Like --netrc, with this file' -r -F
complete -c gimlet -s H -l header -d 'Extra header for the CONNECT request, as \'Name: value\' (repeatable). A Host or User-Agent given here replaces gimlet\'s own' -r
complete -c gimlet -s A -l user-agent -d 'User-Agent header for the CONNECT request; \'\' sends none [default: gimlet/VERSION]' -r
complete -c gimlet -l connect-timeout -d 'Give up when the proxy is not connected and answering within SECS (TCP connect plus the whole handshake; fractions allowed, at most 1000000000)' -r
complete -c gimlet -l idle-timeout -d 'Close the tunnel when no byte has moved in either direction for SECS (fractions allowed, at most 1000000000)' -r
complete -c gimlet -l keepalive -d 'Send TCP keepalive probes to the proxy after SECS of silence, so proxies and NAT boxes do not drop an idle tunnel: whole seconds from 1 to 32767 (the kernel\'s range); 0 disables' -r
complete -c gimlet -l proxy-cacert -d 'Verify an https:// proxy against the CA certificates in FILE (PEM) instead of the system\'s' -r -F
complete -c gimlet -l proxy-pinnedpubkey -d 'Accept the https:// proxy only if its public key hashes to one of sha256//BASE64[;sha256//BASE64...], as curl\'s --pinnedpubkey' -r
complete -c gimlet -l proxy-servername -d 'Present (SNI) and verify NAME instead of the https:// proxy\'s host' -r
complete -c gimlet -l proxy-cert -d 'Client certificate (PEM) for the https:// proxy; the key may be in the same file' -r -F
complete -c gimlet -l proxy-key -d 'Private key (PEM) for --proxy-cert' -r -F
complete -c gimlet -l cacert -d 'With --tls, verify HOST against the CA certificates in FILE (PEM)' -r -F
complete -c gimlet -l servername -d 'With --tls, present and verify NAME instead of HOST' -r
complete -c gimlet -l pinnedpubkey -d 'With --tls, accept HOST only if its public key hashes to one of these' -r
complete -c gimlet -l netrc -d 'Take credentials from ~/.netrc (the entry for the proxy host, else default) when none of -U, --proxy-auth-file or GIMLET_PROXY_AUTH is given'
complete -c gimlet -l proxy-insecure -d 'Do not verify an https:// proxy\'s certificate (a warning is printed)'
complete -c gimlet -l tls -d 'Speak TLS to HOST through the tunnel, verified like a browser would (inside the proxy\'s own TLS for an https:// proxy)'
complete -c gimlet -l insecure -d 'With --tls, do not verify HOST\'s certificate (a warning is printed)'
complete -c gimlet -l fdpass -d 'After the handshake, hand the connected socket to ssh over standard output and exit, so no relay process stays in the path (ssh\'s ProxyUseFdpass yes). Plain proxies only'
complete -c gimlet -s 4 -d 'Reach the proxy over IPv4 only'
complete -c gimlet -s 6 -d 'Reach the proxy over IPv6 only'
complete -c gimlet -s v -l verbose -d 'Show the steps on standard error; twice to show the request and reply heads too (Proxy-Authorization redacted)'
complete -c gimlet -s q -l quiet -d 'Print nothing on standard error, not even errors; the exit status still tells'
complete -c gimlet -s h -l help -d 'Print help (see more with \'--help\')'
complete -c gimlet -s V -l version -d 'Print version'
