complete -c gimlet -s p -l proxy -d 'Proxy to go through (instead of the PROXY argument); repeat for a chain' -r
complete -c gimlet -l noproxy -d 'Hosts to reach directly, overriding no_proxy and NO_PROXY' -r
complete -c gimlet -s U -l proxy-user -d 'Proxy credentials; without :PASSWORD it is asked for' -r
complete -c gimlet -l proxy-auth-file -d 'Read credentials from FILE (user:password on its first line)' -r -F
complete -c gimlet -l proxy-auth -d 'Authentication scheme: any, basic, digest, ntlm or negotiate' -r -f -a "any\t''
basic\t''
digest\t''
ntlm\t''
negotiate\t''"
complete -c gimlet -l proxy-service-name -d 'Kerberos service for Negotiate instead of HTTP@PROXYHOST' -r
complete -c gimlet -l netrc-file -d 'Like --netrc, with this file' -r -F
complete -c gimlet -s H -l header -d 'Extra header for the CONNECT request, as \'Name: value\'' -r
complete -c gimlet -s A -l user-agent -d 'User-Agent header for the CONNECT request; \'\' sends none' -r
complete -c gimlet -l proxy-cacert -d 'Verify an https:// proxy against the CA certificates in FILE (PEM)' -r -F
complete -c gimlet -l proxy-pinnedpubkey -d 'Accept the https:// proxy only if its public key hashes to one of these' -r
complete -c gimlet -l proxy-servername -d 'Present (SNI) and verify NAME instead of the https:// proxy\'s host' -r
complete -c gimlet -l proxy-cert -d 'Client certificate (PEM) for the https:// proxy' -r -F
complete -c gimlet -l proxy-key -d 'Private key (PEM) for --proxy-cert' -r -F
complete -c gimlet -l cacert -d 'With --tls, verify HOST against the CA certificates in FILE (PEM)' -r -F
complete -c gimlet -l servername -d 'With --tls, present and verify NAME instead of HOST' -r
complete -c gimlet -l pinnedpubkey -d 'With --tls, accept HOST only if its public key hashes to one of these' -r
complete -c gimlet -l connect-timeout -d 'Give up when the proxy is not connected and answering within SECS' -r
complete -c gimlet -l idle-timeout -d 'Close the tunnel when no byte has moved in either direction for SECS' -r
complete -c gimlet -l keepalive -d 'Send TCP keepalive probes to the proxy after SECS of silence; 0 disables' -r
complete -c gimlet -l generate -d 'Print the man page or a shell completion script, and exit' -r -f -a "man\t''
complete-bash\t''
complete-zsh\t''
complete-fish\t''"
complete -c gimlet -s L -l local-forward -d 'Listen on [BIND:]PORT and forward each connection to HOST:HOSTPORT, like ssh -L' -r
complete -c gimlet -l forwards -d 'Forward the ports listed in FILE; re-read when it changes and on SIGHUP' -r -F
complete -c gimlet -s D -l dynamic -d 'Serve SOCKS4, SOCKS4a, SOCKS5 and HTTP proxy requests on [BIND:]PORT, like ssh -D' -r
complete -c gimlet -l allow -d 'Let clients from CIDR use a -D port (repeatable; loopback is always allowed)' -r
complete -c gimlet -l client-auth-file -d 'Ask clients of a -D port for the user:password on FILE\'s first line' -r -F
complete -c gimlet -l max-tunnels -d 'Refuse connections while N tunnels are open or being set up' -r
complete -c gimlet -l drain-timeout -d 'On SIGTERM or SIGINT, let open tunnels finish for up to SECS' -r
complete -c gimlet -l log -d 'Append listen mode\'s log to FILE instead of standard error' -r -F
complete -c gimlet -l netrc -d 'Take credentials from ~/.netrc'
complete -c gimlet -l proxy-insecure -d 'Do not verify an https:// proxy\'s certificate (a warning is printed)'
complete -c gimlet -l proxy-http2 -d 'Offer HTTP/2 to every https:// proxy (ALPN h2, then http/1.1)'
complete -c gimlet -l tls -d 'Speak TLS to HOST through the tunnel'
complete -c gimlet -l insecure -d 'With --tls, do not verify HOST\'s certificate (a warning is printed)'
complete -c gimlet -l fdpass -d 'Hand the connected socket to ssh and exit (ProxyUseFdpass yes)'
complete -c gimlet -s 4 -d 'Reach the proxy over IPv4 only'
complete -c gimlet -s 6 -d 'Reach the proxy over IPv6 only'
complete -c gimlet -s v -l verbose -d 'Show the steps on standard error; -vv adds the request and reply heads'
complete -c gimlet -s q -l quiet -d 'Print nothing on standard error, not even errors'
complete -c gimlet -s h -l help -d 'Print help (see more with \'--help\')'
complete -c gimlet -s V -l version -d 'Print version'
