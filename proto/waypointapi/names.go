package waypointapi

import "strconv"

// TypeURL is the xDS type of [ServiceRoutes].
const TypeURL = "type.googleapis.com/ambient.waypoint.v1.ServiceRoutes"

// ResourceName is the xDS name of the table for a parent key ("namespace/
// hostname" of a Service or "namespace/name" of a Gateway), a port (0: the
// table for every port without its own) and a consumer namespace (empty:
// producer routes): "key", "key:port", "key@ns" or "key:port@ns".
func ResourceName(key string, port uint32, consumerNamespace string) string {
	return string(AppendResourceName(make([]byte, 0, len(key)+len(consumerNamespace)+12), key, port, consumerNamespace))
}

// AppendResourceName appends [ResourceName] to b: a lookup by name can
// build it in a buffer of its own and allocate nothing.
func AppendResourceName(b []byte, key string, port uint32, consumerNamespace string) []byte {
	b = append(b, key...)
	if port != 0 {
		b = append(b, ':')
		b = strconv.AppendUint(b, uint64(port), 10)
	}
	if consumerNamespace != "" {
		b = append(b, '@')
		b = append(b, consumerNamespace...)
	}
	return b
}

// Name is [ResourceName] of the table.
func (x *ServiceRoutes) Name() string {
	return ResourceName(x.GetServiceKey(), x.GetPort(), x.GetConsumerNamespace())
}

// PolicyTypeURL is the xDS type of [AuthorizationPolicy].
const PolicyTypeURL = "type.googleapis.com/ambient.waypoint.v1.AuthorizationPolicy"

// Key is the xDS name of the policy: "namespace/name".
func (x *AuthorizationPolicy) Key() string { return x.GetNamespace() + "/" + x.GetName() }

// ResilienceTypeURL is the xDS type of [ServiceResilience].
const ResilienceTypeURL = "type.googleapis.com/ambient.waypoint.v1.ServiceResilience"

// Name is the xDS name of the policy: the service key, "namespace/hostname".
func (x *ServiceResilience) Name() string { return x.GetServiceKey() }
