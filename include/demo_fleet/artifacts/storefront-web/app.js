// Demo artifact: the storefront's client code.
document.title = "Storefront";
