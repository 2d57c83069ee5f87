// Command testapp is the node agent tests' container: a tiny HTTP server
// that reports who it is, so tests can see env, volumes, restarts and pod
// networking from the inside.
//
//	testapp [--listen :8080] [--file PATH] [--write-node PATH] [--ignore-sigterm]
//
// --write-node writes $NODE_NAME to PATH at start.
//
//	GET /         JSON: pod, namespace, node, podIP (from env), remote address
//	GET /pid      the process id
//	GET /file     the contents of --file
//	GET /call?url=U  GETs U (plain HTTP) and returns its body; 502 on failure
//	GET /healthz  200 ok
//
// SIGTERM exits 0, unless --ignore-sigterm (then only SIGKILL ends it).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

func main() {
	listen := flag.String("listen", ":8080", "listen address")
	file := flag.String("file", "", "file served at /file")
	ignoreTerm := flag.Bool("ignore-sigterm", false, "log and ignore SIGTERM")
	writeNode := flag.String("write-node", "", "file to write $NODE_NAME to at start")
	flag.Parse()
	if *writeNode != "" {
		if err := os.WriteFile(*writeNode, []byte(os.Getenv("NODE_NAME")), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "testapp:", err)
			os.Exit(1)
		}
	}
	if *ignoreTerm {
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGTERM)
		go func() {
			for range ch {
				fmt.Fprintln(os.Stderr, "testapp: SIGTERM ignored")
			}
		}()
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{
			"pod":       os.Getenv("POD_NAME"),
			"namespace": os.Getenv("POD_NAMESPACE"),
			"node":      os.Getenv("NODE_NAME"),
			"podIP":     os.Getenv("POD_IP"),
			"remote":    r.RemoteAddr,
		})
	})
	mux.HandleFunc("GET /pid", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, strconv.Itoa(os.Getpid()))
	})
	mux.HandleFunc("GET /file", func(w http.ResponseWriter, r *http.Request) {
		b, err := os.ReadFile(*file)
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		_, _ = w.Write(b)
	})
	client := &http.Client{Timeout: 5 * time.Second}
	mux.HandleFunc("GET /call", func(w http.ResponseWriter, r *http.Request) {
		resp, err := client.Get(r.URL.Query().Get("url"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		_, _ = io.Copy(w, io.LimitReader(resp.Body, 1<<20))
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") })
	srv := &http.Server{Addr: *listen, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	sigs := []os.Signal{os.Interrupt}
	if !*ignoreTerm {
		sigs = append(sigs, syscall.SIGTERM)
	}
	ctx, stop := signal.NotifyContext(context.Background(), sigs...)
	defer stop()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	fmt.Fprintf(os.Stderr, "testapp listening on %s as %s/%s\n", *listen, os.Getenv("POD_NAMESPACE"), os.Getenv("POD_NAME"))
	if err := srv.ListenAndServe(); err != nil && err != http.ErrServerClosed {
		fmt.Fprintln(os.Stderr, "testapp:", err)
		os.Exit(1)
	}
}
