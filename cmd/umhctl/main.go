// Command umhctl sends requests to the umhblob helper and prints the
// replies. By default it talks to the module through /dev/umhblob; with
// -helper it starts the helper binary as a child process, the way the
// module starts it, so the same commands work with and without the
// module.
//
// Usage:
//
//	umhctl [-device PATH | -helper PATH] [-timeout DURATION] COMMAND [ARGS]
//
// Commands:
//
//	ping                            send a ping request
//	echo [-size N | -data STRING]   send an echo request and compare the payloads
//	raw HEXFRAME                    send a whole request frame, given in hex
//	bench [-n N] [-size N] [-c C]   send N echo requests, C at a time
//
// Each reply is printed as its type, id, status, payload length and round
// trip time. umhctl exits with status 1 when a request fails and with
// status 2 on a usage error.
package main

import (
	"errors"
	"fmt"
	"os"
)

func main() {
	err := run(os.Args[1:], os.Stdout)
	if err == nil {
		return
	}
	fmt.Fprintf(os.Stderr, "umhctl: %v\n", err)
	if errors.Is(err, errUsage) {
		os.Exit(2)
	}
	os.Exit(1)
}
