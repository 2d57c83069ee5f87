package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"golang.org/x/sys/unix"

	"github.com/ambientmesh/ambient/internal/cniproto"
)

// plugin implements the CNI commands.
type plugin struct {
	log *slog.Logger
}

func client(conf *NetConf) cniproto.Client {
	return cniproto.Client{SocketPath: conf.ZtunnelSocket, Timeout: conf.Timeout}
}

func (p *plugin) cmdAdd(args *skel.CmdArgs) error {
	conf, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if err := parsePrevResult(conf); err != nil {
		return err
	}
	pod, ok, err := parsePodArgs(args.Args)
	if err != nil {
		return err
	}
	if !ok {
		p.log.Info("not a Kubernetes pod (no K8S_POD_* in CNI_ARGS); passing through", "container", args.ContainerID)
		return types.PrintResult(conf.PrevResult, conf.CNIVersion)
	}
	log := p.log.With("pod", pod.Namespace+"/"+pod.Name, "uid", pod.UID, "container", args.ContainerID)
	ips, err := podIPs(conf.PrevResult)
	if err != nil {
		return err
	}
	nsFD, ino, err := cniproto.OpenNetns(args.Netns)
	if err != nil {
		return fmt.Errorf("ambient-cni: pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	defer unix.Close(nsFD)

	st := cniproto.PodState{
		UID: pod.UID, Namespace: pod.Namespace, Name: pod.Name, IPs: ips,
		ContainerID: args.ContainerID, NetnsPath: args.Netns, NetnsInode: ino,
	}
	if err := cniproto.WriteState(conf.StateDir, st); err != nil {
		return fmt.Errorf("ambient-cni: pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	msg := cniproto.AddPod{UID: pod.UID, Namespace: pod.Namespace, Name: pod.Name, IPs: ips, NetnsPath: args.Netns}
	err = client(conf).AddPod(context.Background(), msg, nsFD)
	switch {
	case err == nil:
		log.Info("pod handed to ztunnel", "ips", ips, "netns", args.Netns)
	case errors.Is(err, cniproto.ErrUnavailable):
		log.Warn("ztunnel unavailable; it will pick the pod up from the state dir when it starts",
			"stateDir", conf.StateDir, "err", err)
	default:
		// ztunnel is running and refused the pod: the ADD fails, so the
		// pod must not be recovered from the state dir either.
		if rerr := cniproto.RemoveState(conf.StateDir, pod.UID); rerr != nil {
			log.Warn("removing state after failed ADD", "err", rerr)
		}
		return fmt.Errorf("ambient-cni: pod %s/%s: %w (see ztunnel's log)", pod.Namespace, pod.Name, err)
	}
	return types.PrintResult(conf.PrevResult, conf.CNIVersion)
}

func (p *plugin) cmdDel(args *skel.CmdArgs) error {
	conf, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	pod, ok, err := parsePodArgs(args.Args)
	if err != nil {
		// DEL must succeed for what it cannot know about.
		p.log.Warn("DEL with unusable CNI_ARGS; nothing to do", "container", args.ContainerID, "err", err)
		return nil
	}
	if !ok {
		p.log.Info("DEL for a sandbox that is not a Kubernetes pod; nothing to do", "container", args.ContainerID)
		return nil
	}
	log := p.log.With("pod", pod.Namespace+"/"+pod.Name, "uid", pod.UID, "container", args.ContainerID)
	st, err := cniproto.ReadState(conf.StateDir, pod.UID)
	switch {
	case err == nil && st.ContainerID != "" && args.ContainerID != "" && st.ContainerID != args.ContainerID:
		// The pod's sandbox was recreated (same uid, new container): this
		// DEL is for the old one and must not tear down the new one.
		log.Info("state belongs to a newer sandbox; leaving it", "stateContainer", st.ContainerID)
		return nil
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		log.Warn("unreadable state file; removing it", "err", err)
	}
	if err := cniproto.RemoveState(conf.StateDir, pod.UID); err != nil {
		// Left behind, ztunnel would recover the pod after a restart while
		// its netns still exists; let the runtime retry.
		return fmt.Errorf("ambient-cni: pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	if err := client(conf).DelPod(context.Background(), pod.UID); err != nil {
		log.Warn("telling ztunnel about DEL failed (best effort)", "err", err)
	} else {
		log.Info("pod removed from ztunnel")
	}
	return nil
}

func (p *plugin) cmdCheck(args *skel.CmdArgs) error {
	conf, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	pod, ok, err := parsePodArgs(args.Args)
	if err != nil {
		return err
	}
	if !ok {
		return nil
	}
	if _, err := cniproto.ReadState(conf.StateDir, pod.UID); err != nil {
		return fmt.Errorf("ambient-cni: CHECK pod %s/%s: %w (ztunnel does not know the pod across restarts; recreate the pod)", pod.Namespace, pod.Name, err)
	}
	return nil
}
