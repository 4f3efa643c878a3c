complete -c gimlet -s p -l proxy -d 'Proxy to go through: host:port, [v6addr]:port or http://[user[:password]@]host[:port] (userinfo percent-decoded; port 80 when a URL omits it)' -r
complete -c gimlet -s U -l proxy-user -d 'Proxy credentials. Without :PASSWORD, the password is asked on the terminal. Prefer --proxy-auth-file or GIMLET_PROXY_AUTH: other users can read command lines' -r
complete -c gimlet -l proxy-auth-file -d 'Read credentials from FILE, corkscrew\'s format: user:password on the first line (the password may contain \':\'). The file must not be accessible by group or others' -r -F
complete -c gimlet -s H -l header -d 'Extra header for the CONNECT request, as \'Name: value\' (repeatable). A Host or User-Agent given here replaces gimlet\'s own' -r
complete -c gimlet -s A -l user-agent -d 'User-Agent header for the CONNECT request; \'\' sends none [default: gimlet/VERSION]' -r
complete -c gimlet -l connect-timeout -d 'Give up when the proxy is not connected and answering within SECS (TCP connect plus the whole handshake; fractions allowed)' -r
complete -c gimlet -l idle-timeout -d 'Close the tunnel when no byte has moved in either direction for SECS' -r
complete -c gimlet -l keepalive -d 'Send TCP keepalive probes to the proxy after SECS of silence, so proxies and NAT boxes do not drop an idle tunnel; 0 disables' -r
complete -c gimlet -s 4 -d 'Reach the proxy over IPv4 only'
complete -c gimlet -s 6 -d 'Reach the proxy over IPv6 only'
complete -c gimlet -s v -l verbose -d 'Show the steps on standard error; twice to show the request and reply heads too (Proxy-Authorization redacted)'
complete -c gimlet -s q -l quiet -d 'Print nothing on standard error, not even errors; the exit status still tells'
complete -c gimlet -s h -l help -d 'Print help (see more with \'--help\')'
complete -c gimlet -s V -l version -d 'Print version'
