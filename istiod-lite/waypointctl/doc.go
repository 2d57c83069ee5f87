// Package waypointctl is istiod-lite's waypoint deployment controller, the
// counterpart of Istio's gateway deployment controller for class
// istio-waypoint: it turns each Gateway API Gateway whose GatewayClass has
// controllerName istio.io/mesh-controller (Istio's name; class
// istio-waypoint by default) into a running waypoint in the Gateway's
// namespace:
//
//   - a ServiceAccount named after the Gateway, so the waypoint's identity
//     is spiffe://<trust-domain>/ns/<namespace>/sa/<gateway>;
//   - a Deployment of cmd/waypoint (one replica unless scaled; the pods
//     labelled istio.io/dataplane-mode=none, never captured themselves),
//     which dials istiod-lite for xDS and certificates with a projected
//     token (audience istio-ca) and the root from ConfigMap
//     istio-ca-root-cert;
//   - a ClusterIP Service with port 15008 "mesh" (appProtocol all), as
//     Istio's.
//
// [Desired] computes the three as server-side apply configurations (a
// pure function); every object carries gateway.istio.io/managed=
// istio.io-mesh-controller, gateway.networking.k8s.io/gateway-name and a
// controller owner reference to the Gateway, so deleting the Gateway
// garbage-collects them. They are applied with field manager
// "istiod-lite" and Force: fields nobody else owns (a user's annotations,
// replicas set by an autoscaler) survive, fields the controller owns are
// taken back when someone changes them, and a deleted object is created
// again. Before applying, the controller extracts its own fields from the
// cached object and skips the call when they already match.
//
// The Gateway's status ([GatewayStatus], pure) gets the Service's
// ClusterIPs (type IPAddress) and DNS name (type Hostname) as addresses,
// which package translate reads to bind workloads to the waypoint; the
// Accepted and Programmed conditions (Programmed=True once the Deployment
// has an available replica) with the Gateway's generation; and a status
// per listener. A Gateway without a listener on 15008 with protocol HBONE,
// or whose name cannot name a Service, is not deployed and gets
// Accepted=False saying why. Objects already deployed for a Gateway that
// later becomes invalid stay until it is deleted (the controller deletes
// nothing; its RBAC has no delete).
//
// The GatewayClass istio-waypoint is created when missing, as Istio's
// class controller does, and never updated (users may manage it); a class
// with controllerName istio.io/mesh-controller gets Accepted=True.
//
// Shell: client-go informers (the managed objects selected by their label,
// Gateways and GatewayClasses) enqueue Gateway keys on a rate-limited
// workqueue; a few workers reconcile them, a failure is retried with
// exponential backoff ([Config.RetryBase] to [Config.RetryMax]) and every
// API call has a timeout. When the gateway.networking.k8s.io/v1 CRDs are
// not installed, [Controller.Run] logs a warning and idles until its
// context ends.
package waypointctl
