package istiodconn

import (
	"errors"
	"fmt"
)

// SourceFlags are a proxy's flags that choose where its configuration and
// certificates come from: istiod-lite (--xds-address, with the CA's root
// file, token file and server name) or a local file with an in-process
// CA (--local-config, --ca-cert, --ca-key, --ca-root).
type SourceFlags struct {
	LocalConfig, XDSAddress              string
	CARootFile, TokenFile, XDSServerName string
	// Set holds the names of the flags given explicitly.
	Set map[string]bool
}

// CheckSource checks that exactly one source is given and that every flag
// given explicitly belongs to it, saying what to change otherwise.
func CheckSource(f SourceFlags) error {
	switch {
	case f.LocalConfig == "" && f.XDSAddress == "":
		return errors.New("no config source: give --xds-address HOST:PORT (istiod-lite, e.g. istiod.istio-system.svc:15012) or --local-config FILE (a YAML mesh)")
	case f.LocalConfig != "" && f.XDSAddress != "":
		return errors.New("--local-config and --xds-address are exclusive: the configuration comes either from a YAML file or from istiod-lite; give one")
	}
	if f.XDSAddress != "" {
		for _, name := range []string{"ca-cert", "ca-key", "ca-root"} {
			if f.Set[name] {
				return fmt.Errorf("--%s configures the in-process CA of --local-config; with --xds-address certificates come from istiod-lite (--ca-address, --ca-root-file, --token-file): drop --%s", name, name)
			}
		}
		for _, v := range []struct{ name, value string }{
			{"ca-root-file", f.CARootFile}, {"token-file", f.TokenFile}, {"xds-server-name", f.XDSServerName},
		} {
			if v.value == "" {
				return fmt.Errorf("--%s is empty; it is needed with --xds-address", v.name)
			}
		}
		return nil
	}
	for _, name := range []string{"ca-address", "ca-root-file", "token-file", "xds-server-name"} {
		if f.Set[name] {
			return fmt.Errorf("--%s is for --xds-address; with --local-config certificates come from the in-process CA (--ca-cert, --ca-key)", name)
		}
	}
	return nil
}
