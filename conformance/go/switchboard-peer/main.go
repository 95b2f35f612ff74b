// Command switchboard-peer is a real grpc-go and etcd-naming peer for switchboard's interop
// tests: grpc-go servers configured the ways fleets run them, servers that register themselves
// with etcd's own naming (go.etcd.io/etcd/clientv3/naming/endpoints), and a grpc-go client that
// resolves through etcd's naming resolver with round_robin.
//
// It builds from Debian's packages alone (golang-go, golang-google-grpc-dev,
// golang-etcd-server-dev) in GOPATH mode:
//
//	GOPATH=/usr/share/gocode GO111MODULE=off go build -o switchboard-peer .
//
// It serves the demo service of proto/user.proto (user.User: GetUserInfo, WatchEvents, Upload
// and Chat: unary, server-streaming, client-streaming and bidi) without generated code: the
// messages are small and are encoded with protowire. Upload answers {chunks, bytes, instance}
// once the client's stream ends; Chat echoes each message as it arrives, its seq and text
// unchanged and instance set to the server's name, as the Rust test server does.
//
//	switchboard-peer [serve] [flags] # prints "listening 127.0.0.1:PORT", then one line per event
//	switchboard-peer call [flags]    # prints one line per call: "ok INSTANCE DETAIL" or "error CODE MESSAGE"
//	switchboard-peer bench -targets ADDR[,ADDR…] # the benchmark suite's grpc-go client (bench.go)
//
// The events a server prints, so that tests can see what it saw:
//
//	connection N / connection N closed   a connection accepted / closed
//	open METHOD                          a streaming call (WatchEvents, Upload, Chat) began
//	ended Chat                           a Chat whose client closed its stream cleanly
//	compressed /user.User/METHOD gzip    a call whose request came compressed (gzip is registered)
//	cancelled METHOD                     a call ended because the client cancelled it (RST_STREAM)
//	deadline METHOD                      a call ended because its grpc-timeout passed
//	health STATUS                        SIGUSR1 flipped the health status
//	deregistered KEY / stopped served=N  SIGTERM: left etcd, drained and stopped
//
// With -stall, GetUserInfo sends its response headers at once and then nothing until the call
// is cancelled or its deadline passes: what a client's deadline must end, body included.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/clientv3/naming/endpoints"
	etcdresolver "go.etcd.io/etcd/clientv3/naming/resolver"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	_ "google.golang.org/grpc/encoding/gzip"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
)

// out serialises the lines the tests read.
var out sync.Mutex

func say(format string, args ...interface{}) {
	out.Lock()
	defer out.Unlock()
	fmt.Fprintf(os.Stdout, format+"\n", args...)
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "switchboard-peer: "+format+"\n", args...)
	os.Exit(2)
}

func main() {
	// A test harness that is killed takes its peers with it: SIGKILL when the parent dies.
	syscall.RawSyscall(syscall.SYS_PRCTL, syscall.PR_SET_PDEATHSIG, uintptr(syscall.SIGKILL), 0)
	if len(os.Args) < 2 {
		fail("usage: switchboard-peer serve|call|bench [flags]")
	}
	switch os.Args[1] {
	case "serve":
		serve(os.Args[2:])
	case "call":
		call(os.Args[2:])
	case "bench":
		bench(os.Args[2:])
	default:
		// `switchboard-peer --name N --port P …` serves, as the test-server binary does.
		if strings.HasPrefix(os.Args[1], "-") {
			serve(os.Args[1:])
			return
		}
		fail("unknown command %q (known: serve, call, bench)", os.Args[1])
	}
}

func etcdClient(hosts string) *clientv3.Client {
	client, err := clientv3.New(clientv3.Config{
		Endpoints:   strings.Split(hosts, ","),
		DialTimeout: 10 * time.Second,
		// etcd's client logs every retry at info level; warnings are enough here.
		LogConfig: &zap.Config{
			Level:            zap.NewAtomicLevelAt(zap.WarnLevel),
			Encoding:         "console",
			EncoderConfig:    zap.NewDevelopmentEncoderConfig(),
			OutputPaths:      []string{"stderr"},
			ErrorOutputPaths: []string{"stderr"},
		},
	})
	if err != nil {
		fail("connecting to etcd %s: %v", hosts, err)
	}
	return client
}

// connTag numbers the connections a server accepted, so that replies say which one they came
// over.
type connTag struct {
	next int64
}

type connKey struct{}

func (t *connTag) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	n := atomic.AddInt64(&t.next, 1)
	say("connection %d", n)
	return context.WithValue(ctx, connKey{}, n)
}
func (t *connTag) HandleConn(ctx context.Context, s stats.ConnStats) {
	if _, ok := s.(*stats.ConnEnd); ok {
		say("connection %d closed", ctx.Value(connKey{}))
	}
}
func (t *connTag) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (t *connTag) HandleRPC(_ context.Context, s stats.RPCStats) {
	if h, ok := s.(*stats.InHeader); ok && h.Compression != "" {
		say("compressed %s %s", h.FullMethod, h.Compression)
	}
}

// userServer implements user.User.
type userServer struct {
	name     string
	delay    time.Duration
	stall    bool
	inflight int64
	peak     int64
	served   int64
}

// enter counts a call in flight and returns what its reply reports about the server.
func (s *userServer) enter(ctx context.Context) (string, func()) {
	now := atomic.AddInt64(&s.inflight, 1)
	for {
		peak := atomic.LoadInt64(&s.peak)
		if now <= peak || atomic.CompareAndSwapInt64(&s.peak, peak, now) {
			break
		}
	}
	conn, _ := ctx.Value(connKey{}).(int64)
	detail := fmt.Sprintf("conn=%d peak=%d", conn, atomic.LoadInt64(&s.peak))
	return detail, func() {
		atomic.AddInt64(&s.inflight, -1)
		atomic.AddInt64(&s.served, 1)
	}
}

// ended returns err, the error a call of method ends with, and prints "cancelled METHOD" if the
// call ended because the client cancelled it, or "deadline METHOD" if its deadline passed:
// either the call's context says so, or err does (a RecvMsg or SendMsg cut short).
func ended(ctx context.Context, method string, err error) error {
	why := ctx.Err()
	if why == nil && err != nil {
		switch status.Code(err) {
		case codes.Canceled:
			why = context.Canceled
		case codes.DeadlineExceeded:
			why = context.DeadlineExceeded
		}
	}
	switch why {
	case context.Canceled:
		say("cancelled %s", method)
	case context.DeadlineExceeded:
		say("deadline %s", method)
	}
	return err
}

func (s *userServer) getUserInfo(ctx context.Context, req *getUserInfoRequest) (*userInfo, error) {
	detail, leave := s.enter(ctx)
	defer leave()
	if s.stall {
		if err := grpc.SendHeader(ctx, metadata.MD{}); err != nil {
			return nil, ended(ctx, "GetUserInfo", err)
		}
		<-ctx.Done()
		return nil, ended(ctx, "GetUserInfo", status.FromContextError(ctx.Err()).Err())
	}
	if s.delay > 0 {
		select {
		case <-time.After(s.delay):
		case <-ctx.Done():
			return nil, ended(ctx, "GetUserInfo", status.FromContextError(ctx.Err()).Err())
		}
	}
	return &userInfo{id: req.id, username: detail, instance: s.name}, nil
}

func (s *userServer) watchEvents(req *watchEventsRequest, stream grpc.ServerStream) error {
	ctx := stream.Context()
	_, leave := s.enter(ctx)
	defer leave()
	for seq := uint64(1); seq <= uint64(req.count); seq++ {
		if seq > 1 {
			select {
			case <-time.After(time.Duration(req.intervalMs) * time.Millisecond):
			case <-ctx.Done():
				return ended(ctx, "WatchEvents", status.FromContextError(ctx.Err()).Err())
			}
		}
		if err := stream.SendMsg(&event{seq: seq, instance: s.name}); err != nil {
			return ended(ctx, "WatchEvents", err)
		}
	}
	return nil
}

// upload counts and sums up the chunks until the client's stream ends, then answers.
func (s *userServer) upload(stream grpc.ServerStream) error {
	ctx := stream.Context()
	_, leave := s.enter(ctx)
	defer leave()
	summary := &uploadSummary{instance: s.name}
	for {
		in := new(chunk)
		err := stream.RecvMsg(in)
		if err == io.EOF {
			break
		}
		if err != nil {
			return ended(ctx, "Upload", err)
		}
		summary.chunks++
		summary.bytes += uint64(len(in.data))
	}
	if err := stream.SendMsg(summary); err != nil {
		return ended(ctx, "Upload", err)
	}
	return nil
}

// chat echoes every message as it arrives, with this server's name, until the client's stream
// ends.
func (s *userServer) chat(stream grpc.ServerStream) error {
	ctx := stream.Context()
	_, leave := s.enter(ctx)
	defer leave()
	for {
		in := new(chatMessage)
		err := stream.RecvMsg(in)
		if err == io.EOF {
			say("ended Chat")
			return nil
		}
		if err != nil {
			return ended(ctx, "Chat", err)
		}
		in.instance = s.name
		if err := stream.SendMsg(in); err != nil {
			return ended(ctx, "Chat", err)
		}
	}
}

var userServiceDesc = grpc.ServiceDesc{
	ServiceName: "user.User",
	HandlerType: (*interface{})(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "GetUserInfo",
		Handler: func(srv interface{}, ctx context.Context, dec func(interface{}) error, _ grpc.UnaryServerInterceptor) (interface{}, error) {
			req := new(getUserInfoRequest)
			if err := dec(req); err != nil {
				return nil, ended(ctx, "GetUserInfo", err)
			}
			return srv.(*userServer).getUserInfo(ctx, req)
		},
	}},
	Streams: []grpc.StreamDesc{{
		StreamName:    "WatchEvents",
		ServerStreams: true,
		Handler: func(srv interface{}, stream grpc.ServerStream) error {
			say("open WatchEvents")
			req := new(watchEventsRequest)
			if err := stream.RecvMsg(req); err != nil {
				return ended(stream.Context(), "WatchEvents", err)
			}
			return srv.(*userServer).watchEvents(req, stream)
		},
	}, {
		StreamName:    "Upload",
		ClientStreams: true,
		Handler: func(srv interface{}, stream grpc.ServerStream) error {
			say("open Upload")
			return srv.(*userServer).upload(stream)
		},
	}, {
		StreamName:    "Chat",
		ServerStreams: true,
		ClientStreams: true,
		Handler: func(srv interface{}, stream grpc.ServerStream) error {
			say("open Chat")
			return srv.(*userServer).chat(stream)
		},
	}},
	Metadata: "user.proto",
}

func serve(args []string) {
	flags := flag.NewFlagSet("serve", flag.ExitOnError)
	port := flags.Int("port", 0, "port to listen on, on 127.0.0.1 (0 = a free one)")
	name := flags.String("name", "go", "instance name every reply carries")
	delay := flags.Duration("delay", 0, "how long each GetUserInfo takes")
	stall := flags.Bool("stall", false, "GetUserInfo sends its response headers, then nothing until the call is cancelled or its deadline passes")
	maxAge := flags.Duration("max-connection-age", 0, "MaxConnectionAge: GOAWAY a connection this old (0 = never)")
	maxAgeGrace := flags.Duration("max-connection-age-grace", 5*time.Second, "MaxConnectionAgeGrace")
	maxStreams := flags.Uint("max-concurrent-streams", 0, "MAX_CONCURRENT_STREAMS (0 = grpc-go's default)")
	minPing := flags.Duration("keepalive-min-time", 0, "keepalive enforcement: the shortest ping interval allowed, PermitWithoutStream false (0 = grpc-go's default policy, 5 min)")
	notServing := flags.Bool("not-serving", false, "start with health NOT_SERVING (SIGUSR1 flips it)")
	etcdHosts := flags.String("etcd", "", "etcd endpoints: register with etcd's naming endpoints.Manager")
	target := flags.String("target", "", "the etcd-naming target to register under (key TARGET/ADDR)")
	ttl := flags.Int64("lease-ttl", 5, "lease TTL in seconds")
	flags.Parse(args)

	var options []grpc.ServerOption
	options = append(options, grpc.StatsHandler(&connTag{}))
	if *maxAge > 0 {
		options = append(options, grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionAge:      *maxAge,
			MaxConnectionAgeGrace: *maxAgeGrace,
		}))
	}
	if *maxStreams > 0 {
		options = append(options, grpc.MaxConcurrentStreams(uint32(*maxStreams)))
	}
	if *minPing > 0 {
		options = append(options, grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             *minPing,
			PermitWithoutStream: false,
		}))
	}
	server := grpc.NewServer(options...)
	users := &userServer{name: *name, delay: *delay, stall: *stall}
	server.RegisterService(&userServiceDesc, users)
	healthServer := health.NewServer()
	serving := !*notServing
	setHealth := func(announce bool) {
		st := healthpb.HealthCheckResponse_SERVING
		if !serving {
			st = healthpb.HealthCheckResponse_NOT_SERVING
		}
		healthServer.SetServingStatus("", st)
		healthServer.SetServingStatus("user.User", st)
		if announce {
			say("health %s", st)
		}
	}
	setHealth(false)
	healthpb.RegisterHealthServer(server, healthServer)

	listener, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", *port))
	if err != nil {
		fail("listening on 127.0.0.1:%d: %v", *port, err)
	}
	addr := listener.Addr().String()

	var (
		manager endpoints.Manager
		client  *clientv3.Client
		lease   clientv3.LeaseID
		key     string
	)
	if *etcdHosts != "" {
		if *target == "" {
			fail("-etcd needs -target")
		}
		client = etcdClient(*etcdHosts)
		manager, err = endpoints.NewManager(client, *target)
		if err != nil {
			fail("endpoints manager: %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		grant, err := client.Grant(ctx, *ttl)
		if err != nil {
			fail("granting a lease: %v", err)
		}
		lease = grant.ID
		key = *target + "/" + addr
		if err := manager.AddEndpoint(ctx, key, endpoints.Endpoint{Addr: addr}, clientv3.WithLease(lease)); err != nil {
			fail("registering %s: %v", key, err)
		}
		cancel()
		keep, err := client.KeepAlive(context.Background(), lease)
		if err != nil {
			fail("keeping lease %x alive: %v", lease, err)
		}
		go func() {
			for range keep {
			}
		}()
	}
	// Signals are caught before the address is announced: a test may signal at once.
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGUSR1)
	say("listening %s", addr)
	if key != "" {
		say("registered %s lease %d", key, lease)
	}
	go func() {
		for sig := range signals {
			if sig == syscall.SIGUSR1 {
				serving = !serving
				setHealth(true)
				continue
			}
			// Leave as a well-behaved member of an etcd-naming fleet: deregister first, then
			// stop taking new calls and finish those in flight.
			if manager != nil {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				if err := manager.DeleteEndpoint(ctx, key); err != nil {
					fmt.Fprintf(os.Stderr, "switchboard-peer: deregistering %s: %v\n", key, err)
				}
				client.Revoke(ctx, lease)
				cancel()
				say("deregistered %s", key)
			}
			healthServer.Shutdown()
			server.GracefulStop()
			return
		}
	}()
	if err := server.Serve(listener); err != nil {
		fail("serving: %v", err)
	}
	say("stopped served=%d", atomic.LoadInt64(&users.served))
}

func call(args []string) {
	flags := flag.NewFlagSet("call", flag.ExitOnError)
	etcdHosts := flags.String("etcd", "", "etcd endpoints of the naming resolver")
	target := flags.String("target", "", "the etcd-naming target (dials etcd:///TARGET)")
	count := flags.Int("count", 0, "calls to make (0 = until stopped)")
	interval := flags.Duration("interval", 0, "pause between calls")
	timeout := flags.Duration("timeout", 2*time.Second, "each call's deadline")
	ready := flags.Duration("ready-timeout", 30*time.Second, "how long to wait for the channel to be READY")
	flags.Parse(args)
	if *etcdHosts == "" || *target == "" {
		fail("call needs -etcd and -target")
	}

	client := etcdClient(*etcdHosts)
	builder, err := etcdresolver.NewBuilder(client)
	if err != nil {
		fail("etcd naming resolver: %v", err)
	}
	conn, err := grpc.Dial("etcd:///"+*target,
		grpc.WithInsecure(),
		grpc.WithResolvers(builder),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`),
	)
	if err != nil {
		fail("dialing etcd:///%s: %v", *target, err)
	}
	defer conn.Close()

	// The first calls wait for the resolver and the connections; every later one is fail-fast,
	// so that an instance that left without the resolver following shows as an error.
	readyCtx, cancel := context.WithTimeout(context.Background(), *ready)
	for state := conn.GetState(); state != connectivity.Ready; state = conn.GetState() {
		if !conn.WaitForStateChange(readyCtx, state) {
			fail("etcd:///%s not READY within %v (last state %v)", *target, *ready, state)
		}
	}
	cancel()
	say("ready")

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	ok, failed := 0, 0
	for n := 0; *count == 0 || n < *count; n++ {
		select {
		case <-stop:
			say("done ok=%d errors=%d", ok, failed)
			return
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		reply := new(userInfo)
		err := conn.Invoke(ctx, "/user.User/GetUserInfo", &getUserInfoRequest{id: int64(n)}, reply)
		cancel()
		if err != nil {
			failed++
			st := status.Convert(err)
			say("error %s %s", st.Code(), strings.ReplaceAll(st.Message(), "\n", " "))
		} else {
			ok++
			say("ok %s %s", reply.instance, reply.username)
		}
		if *interval > 0 {
			time.Sleep(*interval)
		}
	}
	say("done ok=%d errors=%d", ok, failed)
	if failed > 0 {
		os.Exit(1)
	}
}
