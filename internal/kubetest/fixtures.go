package kubetest

// TwoNodes is a fixture for node-authorization tests: namespaces
// istio-system and shop; ServiceAccounts istio-system/ztunnel, shop/web and
// shop/cart; Nodes node-a and node-b with a ztunnel pod on each (ztunnel-a,
// ztunnel-b); shop's web-1 on node-a and cart-1 on node-b.
const TwoNodes = `
apiVersion: v1
kind: Namespace
metadata: {name: istio-system}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: ztunnel, namespace: istio-system}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: cart, namespace: shop}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: web, namespace: shop}
---
apiVersion: v1
kind: Node
metadata: {name: node-a}
---
apiVersion: v1
kind: Node
metadata: {name: node-b}
---
apiVersion: v1
kind: Pod
metadata: {name: ztunnel-a, namespace: istio-system}
spec:
  nodeName: node-a
  serviceAccountName: ztunnel
  containers: [{name: ztunnel, image: ztunnel}]
---
apiVersion: v1
kind: Pod
metadata: {name: ztunnel-b, namespace: istio-system}
spec:
  nodeName: node-b
  serviceAccountName: ztunnel
  containers: [{name: ztunnel, image: ztunnel}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop}
spec:
  nodeName: node-a
  serviceAccountName: web
  containers: [{name: web, image: web}]
---
apiVersion: v1
kind: Pod
metadata: {name: cart-1, namespace: shop}
spec:
  nodeName: node-b
  serviceAccountName: cart
  containers: [{name: cart, image: cart}]
`
