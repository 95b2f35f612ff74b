package main

// The benchmark client: a grpc-go ClientConn as a Go service would hold one, driven by the
// Rust benchmark suite (crates/bench) so that grpc-go is measured in the same run, on the same
// servers, as the Rust clients.
//
//	switchboard-peer bench -targets ADDR[,ADDR…]
//
// One address is dialled directly (grpc-go's default pick_first over one connection); several
// go through a manual resolver with round_robin, one connection each. Once every address has
// answered it prints "ready", then reads commands on stdin, one per line:
//
//	run CALLERS MILLIS   CALLERS goroutines each send the next unary GetUserInfo as soon as
//	                     the last one answered, for MILLIS ms; prints
//	                     "result ok=N errors=N elapsed_us=N cpu_us=N lat=US:COUNT,US:COUNT,…"
//	                     (cpu_us: this process's user + system time during the run; lat: the
//	                     successful calls' latencies in microseconds, as value:count pairs)
//
// and exits when stdin closes.

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
)

// maxCallsPerCaller bounds a run whatever the servers' speed.
const maxCallsPerCaller = 20000000

func bench(args []string) {
	if len(args) != 2 || args[0] != "-targets" {
		fail("usage: switchboard-peer bench -targets ADDR[,ADDR…]")
	}
	targets := strings.Split(args[1], ",")
	var conn *grpc.ClientConn
	var err error
	if len(targets) == 1 {
		conn, err = grpc.Dial(targets[0], grpc.WithInsecure())
	} else {
		r := manual.NewBuilderWithScheme("bench")
		addrs := make([]resolver.Address, len(targets))
		for i, t := range targets {
			addrs[i] = resolver.Address{Addr: t}
		}
		r.InitialState(resolver.State{Addresses: addrs})
		conn, err = grpc.Dial(r.Scheme()+":///peers",
			grpc.WithInsecure(),
			grpc.WithResolvers(r),
			grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`),
		)
	}
	if err != nil {
		fail("dialing %v: %v", targets, err)
	}
	defer conn.Close()

	// Ready once every target has answered (wait-for-ready, at most 30 s).
	seen := map[string]bool{}
	deadline := time.Now().Add(30 * time.Second)
	for len(seen) < len(targets) {
		if time.Now().After(deadline) {
			fail("only %d of %d targets answered within 30 s", len(seen), len(targets))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		reply := new(userInfo)
		err := conn.Invoke(ctx, "/user.User/GetUserInfo", &getUserInfoRequest{id: 1}, reply, grpc.WaitForReady(true))
		cancel()
		if err == nil {
			seen[reply.instance] = true
		}
	}
	say("ready")

	lines := bufio.NewScanner(os.Stdin)
	for lines.Scan() {
		fields := strings.Fields(lines.Text())
		if len(fields) != 3 || fields[0] != "run" {
			fail("unknown command %q (known: run CALLERS MILLIS)", lines.Text())
		}
		callers, err1 := strconv.Atoi(fields[1])
		millis, err2 := strconv.Atoi(fields[2])
		if err1 != nil || err2 != nil || callers < 1 || millis < 1 {
			fail("bad command %q", lines.Text())
		}
		say("%s", run(conn, callers, time.Duration(millis)*time.Millisecond))
	}
}

// cpuTime is this process's user + system time.
func cpuTime() time.Duration {
	var usage syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &usage); err != nil {
		fail("getrusage: %v", err)
	}
	return time.Duration(usage.Utime.Nano() + usage.Stime.Nano())
}

// run drives the closed loop and describes what it measured.
func run(conn *grpc.ClientConn, callers int, length time.Duration) string {
	started := time.Now()
	until := started.Add(length)
	cpuBefore := cpuTime()
	latencies := make([][]int64, callers)
	errors := make([]int, callers)
	var wg sync.WaitGroup
	for c := 0; c < callers; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			request := &getUserInfoRequest{id: 1}
			for n := 0; n < maxCallsPerCaller; n++ {
				t := time.Now()
				if !t.Before(until) {
					return
				}
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				reply := new(userInfo)
				err := conn.Invoke(ctx, "/user.User/GetUserInfo", request, reply)
				cancel()
				if err != nil {
					errors[c]++
					continue
				}
				latencies[c] = append(latencies[c], time.Since(t).Microseconds())
			}
		}(c)
	}
	wg.Wait()
	elapsed := time.Since(started)
	cpu := cpuTime() - cpuBefore

	counts := map[int64]int{}
	ok, failed := 0, 0
	for c := range latencies {
		ok += len(latencies[c])
		failed += errors[c]
		for _, us := range latencies[c] {
			counts[us]++
		}
	}
	values := make([]int64, 0, len(counts))
	for us := range counts {
		values = append(values, us)
	}
	sort.Slice(values, func(i, j int) bool { return values[i] < values[j] })
	var lat strings.Builder
	for i, us := range values {
		if i > 0 {
			lat.WriteByte(',')
		}
		fmt.Fprintf(&lat, "%d:%d", us, counts[us])
	}
	return fmt.Sprintf("result ok=%d errors=%d elapsed_us=%d cpu_us=%d lat=%s",
		ok, failed, elapsed.Microseconds(), cpu.Microseconds(), lat.String())
}
